#!/usr/bin/env bash
# pyairbyte-check.sh: runs the scheduled runner's real path: PyAirbyte itself (in its own venv, it is
# ~780 MB with exact pins), the project's installed connectors and the local Stripe emulator. Two runs
# against the same state directory: the second must be incremental.
#   PERLY_PYAIRBYTE_PYTHON=/path/to/python scripts/pyairbyte-check.sh   # reuse a Python that has airbyte
set -euo pipefail
cd "$(dirname "$0")/.."
venv=var/pyairbyte-venv
py=${PERLY_PYAIRBYTE_PYTHON:-$venv/bin/python}
if ! "$py" -c 'import airbyte' 2>/dev/null; then
  echo "pyairbyte-check: installing PyAirbyte into $venv (about 780 MB, a few minutes)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q 'airbyte==0.71.3'
  py=$venv/bin/python
fi
PERLY_PYAIRBYTE_PYTHON=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") \
  exec .venv/bin/python -m pytest -q -p no:cacheprovider integration_tests/test_e2e_schedule.py "$@"
