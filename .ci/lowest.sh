#!/usr/bin/env bash
# The lowest versions pyproject allows: a fresh environment with every core dependency at
# its floor (its ">=" made "==") and the Python that CI runs (the floor of requires-python)
# runs the fast subset of the suite that exercises each of them.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - "$work/floors.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
python_floor = project["requires-python"].removeprefix(">=")
if f"{sys.version_info.major}.{sys.version_info.minor}" != python_floor:
    sys.exit(f"lowest.sh: CI's Python {sys.version.split()[0]} is not the floor {python_floor}")
floors = [d.replace(">=", "==") for d in project["dependencies"]]
if any("==" not in f for f in floors):
    sys.exit(f"lowest.sh: every core dependency needs a floor (>=): {floors}")
open(sys.argv[1], "w").write("\n".join(floors) + "\n")
PY
uv venv -q --python "$(python -c 'import sys; print(sys.executable)')" "$work/venv"
py="$work/venv/bin/python"
# torch through pip, whose configuration holds the CPU build of the pinned torch==2.13.0
# (an unpinned one would be a CUDA build of several GB).
python -m pip --python "$py" install --quiet --disable-pip-version-check torch==2.13.0
uv pip install --quiet --python "$py" -c "$work/floors.txt" -e ".[test]"
"$py" - "$work/floors.txt" <<'PY'
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for line in open(sys.argv[1]).read().split():
    req = Requirement(line)
    if not req.specifier.contains(version(req.name)):
        sys.exit(f"lowest.sh: {req.name} {version(req.name)} installed, not the floor {line}")
    print(f"{req.name} {version(req.name)}")
PY
# The floors' risks: flax's NNX and Linen, orbax restoring into them, the layers' jax.
CI=true "$py" -m pytest -q -n 2 -p no:cacheprovider tests/test_nnx.py tests/test_linen.py \
    tests/test_checkpoint.py tests/test_export.py tests/test_unroll.py tests/test_flax_native.py
