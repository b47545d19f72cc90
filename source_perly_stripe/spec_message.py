"""The SPEC message without the Airbyte CDK: `spec` is the verb run most often (every connector form
load) and importing the CDK takes most of a second, so it is printed from spec.json directly.

Its bytes are those the CDK's serializer gives: ConnectorSpecification's fields in their declared
order, unset ones left out, the two with a default (supportsNormalization, supportsDBT) filled in."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# (field, default) in the order of airbyte_cdk.models.ConnectorSpecification; None: left out when unset.
_SPEC_FIELDS: tuple[tuple[str, Any], ...] = (
    ("connectionSpecification", None),
    ("documentationUrl", None),
    ("changelogUrl", None),
    ("supportsIncremental", None),
    ("supportsNormalization", False),
    ("supportsDBT", False),
    ("supported_destination_sync_modes", None),
    ("authSpecification", None),
    ("advanced_auth", None),
    ("protocol_version", None),
)


def spec_json() -> dict[str, Any]:
    text = resources.files("source_perly_stripe").joinpath("spec.json").read_text()
    spec: dict[str, Any] = json.loads(text)
    return spec


def spec_message_line() -> str:
    """The SPEC message as one line of JSON, as the CDK entrypoint prints it."""
    spec = spec_json()
    unknown = set(spec) - {name for name, _ in _SPEC_FIELDS}
    if unknown:
        raise ValueError(f"spec.json has fields the Airbyte protocol does not: {sorted(unknown)}")
    ordered = {
        name: spec.get(name, default) for name, default in _SPEC_FIELDS if spec.get(name, default) is not None
    }
    return json.dumps({"type": "SPEC", "spec": ordered}, ensure_ascii=False, separators=(",", ":"))
