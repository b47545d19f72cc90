"""The source's SPEC, from spec.json: printed by `spec` without the Airbyte CDK (see connector_spec)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def spec_json() -> dict[str, Any]:
    text = resources.files("source_perly_stripe").joinpath("spec.json").read_text()
    spec: dict[str, Any] = json.loads(text)
    return spec
