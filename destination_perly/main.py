"""`python destination_perly/main.py spec|check|write ...` (the layout Airbyte's tooling expects)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from destination_perly.run import run  # noqa: E402

if __name__ == "__main__":
    run()
