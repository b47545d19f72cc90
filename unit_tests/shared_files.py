"""Files some tests take from `../shared`: Stripe's example objects and Airbyte's metadata validator.

That folder sits beside the repository on the workstation and in CI. A clone on its own has none, so
those tests are skipped there with the reason; `.ci/run` sets PERLY_REQUIRE_SHARED=1, which makes a
missing file fail them instead. PERLY_SHARED_DIR points at the folder when it is elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DIR = Path(os.environ.get("PERLY_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")


def shared_file(*parts: str) -> Path:
    path = SHARED_DIR.joinpath(*parts)
    if not path.is_file():
        reason = f"needs {path} (the shared folder beside the repository, or PERLY_SHARED_DIR)"
        if os.environ.get("PERLY_REQUIRE_SHARED"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path
