#!/usr/bin/env bash
# The public API as a type checker sees it: tests/typing/public_api.py asserts the exact
# types of the public functions (mypy reads recurrent's annotations, not its internals).
set -euo pipefail
cd "$(dirname "$0")/.."
mypy --follow-imports=silent --ignore-missing-imports tests/typing/public_api.py
