#!/usr/bin/env bash
# The documentation site (docs/) as CI builds it: every warning is an error (-W), all of
# them are reported before it fails (--keep-going), and every cross-reference must resolve
# (-n, nitpicky), so a broken reference or a public name without an API page fails the
# run. The notebooks render from their saved outputs (docs/conf.py); nothing executes them
# here. The site is written to docs/_build/html, which git ignores.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf docs/_build docs/api/_autosummary  # no page left over from a name no longer public
sphinx-build -W --keep-going -n -q -b html docs docs/_build/html
