#!/usr/bin/env bash
# The distribution as a user gets it: build the sdist and wheel, check their metadata,
# install the wheel (not editable) into a fresh environment and use it outside the source
# tree: the core must bring no CLI-only package, and with [examples] the CLI must train,
# save and evaluate a run.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m build --quiet --sdist --wheel --outdir "$work/dist" . > /dev/null
python -m twine check --strict "$work"/dist/*
wheel=$(ls "$work"/dist/*.whl)
python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ("recurrent/py.typed", "recurrent/app/cli.py", "recurrent/kernels/layer.py"):
    assert needed in names, f"wheel.sh: {needed} is not in the wheel"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel"
assert not any(n.startswith(("tests/", "benchmarks/")) for n in names), "tests in the wheel"
PY
uv venv -q --python "$(python -c 'import sys; print(sys.executable)')" "$work/venv"
py="$work/venv/bin/python"
uv pip install --quiet --python "$py" "$wheel"
cd "$work"  # outside the source tree: recurrent comes from the wheel
"$py" - <<'PY'
import importlib.util, pathlib, sys
for cli_only in ("sklearn", "statsmodels", "matplotlib", "tqdm", "pandas", "torch"):
    assert importlib.util.find_spec(cli_only) is None, f"the core wheel installed {cli_only}"
import jax, jax.numpy as jnp
import recurrent
assert "site-packages" in recurrent.__file__, recurrent.__file__
assert not any(m in sys.modules for m in ("flax", "orbax", "jax.experimental.pallas"))
params = recurrent.init_lstm(jax.random.PRNGKey(0), 3, 4, bidirectional=True)
y, (h_n, c_n) = recurrent.lstm(params, jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]))
assert y.shape == (2, 5, 8) and h_n.shape == (2, 2, 4)
module = recurrent.nnx.LSTM(3, 4, rngs=__import__("flax").nnx.Rngs(0))
assert module(jnp.ones((2, 5, 3))).shape == (2, 5, 4)
recurrent.checkpoint.save(pathlib.Path("ckpt").absolute(), params)
try:  # without the onnx extra, the export names it
    recurrent.onnx.lstm_to_onnx(params)
    sys.exit("wheel.sh: lstm_to_onnx ran without the onnx extra")
except ImportError as e:
    assert str(e) == 'recurrent.onnx needs the onnx extra: pip install "jax-recurrent[onnx]"', e
print("core wheel: recurrent", recurrent.__version__, "from", recurrent.__file__)
PY
set +e
"$py" -m recurrent train 2> missing.txt
status=$?
set -e
grep -q 'pip install "jax-recurrent\[examples\]"' missing.txt && [ "$status" = 1 ] \
    || { echo "wheel.sh: without [examples], python -m recurrent said:"; cat missing.txt; exit 1; }
uv pip install --quiet --python "$py" "$wheel[examples]"
"$py" -m recurrent --version
"$py" -m recurrent train --steps 30 --out run 2> /dev/null
"$py" -m recurrent evaluate --run run
