"""The application around the library: ``python -m recurrent`` (its command line, tasks,
training loop and datasets). Needs the ``examples`` extra: ``pip install
"jax-recurrent[examples]"``. Nothing in the library imports it.

    from recurrent.app import load_run
    run = load_run("runs")  # the --out directory of `python -m recurrent train`
    run.args.dataset, run.network, run.params
"""

from recurrent.app.runs import Run as Run
from recurrent.app.runs import load_run as load_run

__all__ = ["Run", "load_run"]
