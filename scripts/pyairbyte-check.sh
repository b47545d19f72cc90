#!/usr/bin/env bash
# pyairbyte-check.sh: runs `perly schedule`'s real path: PyAirbyte itself, the connectors and `perly`
# installed from this tree (a plain, non-editable `pip install '.[pyairbyte]'`, in a venv of its own:
# PyAirbyte is ~780 MB with exact pins) and the local Stripe emulator. Two runs against the same state
# directory: the second must be incremental.
#   PERLY_PYAIRBYTE_VENV=/path/to/venv scripts/pyairbyte-check.sh   # another venv (default var/pyairbyte-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PERLY_PYAIRBYTE_VENV:-var/pyairbyte-venv}
if ! "$venv/bin/python" -c 'import airbyte' 2>/dev/null; then
  echo "pyairbyte-check: installing PyAirbyte into $venv (about 780 MB, a few minutes)"
  python3 -m venv "$venv"
fi
# This tree's code, every time (dependencies already there are kept).
"$venv/bin/python" -m pip install -q --disable-pip-version-check '.[pyairbyte]'
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
rm -rf build ./*.egg-info
PERLY_PYAIRBYTE_PYTHON=$(cd "$venv/bin" && pwd)/python \
  exec .venv/bin/python -m pytest -q -p no:cacheprovider integration_tests/test_e2e_schedule.py "$@"
