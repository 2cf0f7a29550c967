"""``python -m recurrent``: the command line of :mod:`recurrent.app`, which needs the
``examples`` extra; without it, one line says which to install."""

import sys

# The packages only the application needs (the ``examples`` extra of pyproject.toml).
_EXAMPLES = ("matplotlib", "sklearn", "statsmodels", "tqdm")

if __name__ == "__main__":
    try:
        from recurrent.app.cli import main

        sys.exit(main())
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in _EXAMPLES:
            raise
        sys.exit(f"python -m recurrent needs {e.name}, which comes with the examples extra: "
                 f'pip install "jax-recurrent[examples]"')
