"""``import recurrent`` loads the functional API only: Flax, orbax and Pallas load with the
submodule that needs them, on first use, as attribute or as ``from recurrent import``."""

import subprocess
import sys

import pytest

HEAVY = ("flax", "orbax", "jax.experimental.pallas")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules in ``sys.modules`` after running ``code`` in a fresh process."""
    script = f"import sys\n{code}\nprint(*[m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return out.split()


def test_import_recurrent_loads_no_heavy_dependency():
    assert _loaded_after("import recurrent, jax\n"
                         "recurrent.lstm(recurrent.init_lstm(jax.random.PRNGKey(0), 2, 3),"
                         " jax.numpy.ones((1, 4, 2)))") == []


@pytest.mark.parametrize("code, loaded", [
    ("import recurrent; recurrent.linen.LSTM", ["flax"]),
    ("from recurrent import nnx; nnx.GRU", ["flax"]),
    ("import recurrent; recurrent.checkpoint.save", ["orbax"]),
])
def test_submodules_load_on_first_use(code, loaded):
    assert set(loaded) <= set(_loaded_after(code))


def test_unknown_attribute_is_an_attribute_error():
    import recurrent

    with pytest.raises(AttributeError, match="no attribute 'lstmm'"):
        recurrent.lstmm  # noqa: B018
