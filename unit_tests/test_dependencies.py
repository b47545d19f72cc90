"""Every runtime dependency pyproject.toml declares is imported by the packages it ships."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_declared_dependency_is_imported_by_the_shipped_packages() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    modules = {
        re.split(r"[\[<>=~! ]", requirement, maxsplit=1)[0].replace("-", "_") for requirement in declared
    }
    code = "\n".join(
        path.read_text()
        for package in ("source_perly_stripe", "destination_perly", "stripe_vocabulary")
        for path in (ROOT / package).rglob("*.py")
    )

    unused = sorted(m for m in modules if not re.search(rf"^\s*(from|import) {m}\b", code, re.MULTILINE))

    assert unused == []
