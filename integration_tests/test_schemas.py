"""The streams' JSON schemas: generated from stripe-python's typed resource classes
(scripts/gen_schemas.py), one JSON type per property (what Airbyte destinations and PyAirbyte map to a
column), nullable where Stripe's types say `Optional`, and met by what the emulator renders."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from airbyte_cdk.models import SyncMode  # type: ignore[attr-defined,unused-ignore]
from airbyte_cdk.test.catalog_builder import CatalogBuilder, ConfiguredAirbyteStreamBuilder
from airbyte_cdk.test.entrypoint_wrapper import read

from integration_tests.stripe_emulator import Emulator
from source_perly_stripe.source import SourcePerlyStripe, load_schema
from source_perly_stripe.streams import ALL_STREAMS

ROOT = Path(__file__).resolve().parents[1]
NAMES = [s.name for s in ALL_STREAMS]


def test_schemas_are_what_stripes_typed_classes_give() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_schemas.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert check.returncode == 0, check.stderr


def json_types(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type")
    return [kinds] if isinstance(kinds, str) else list(kinds or [])


@pytest.mark.parametrize("stream", NAMES)
def test_every_property_has_exactly_one_type_besides_null(stream: str) -> None:
    untyped = {
        name: prop
        for name, prop in load_schema(stream)["properties"].items()
        if len([t for t in json_types(prop) if t != "null"]) != 1
        or (prop.get("items") is not None and len(json_types(prop["items"])) != 1)
    }

    assert untyped == {}


@pytest.mark.parametrize(
    ("stream", "field", "expected"),
    [
        # Stripe: cancel_at is a nullable timestamp; created and customer are always there.
        ("subscriptions", "cancel_at", ["null", "integer"]),
        ("subscriptions", "created", "integer"),
        ("subscriptions", "customer", "string"),  # an id: the source does not expand it
        ("subscriptions", "discounts", "array"),  # the source expands them: objects
        ("invoices", "amount_remaining", "integer"),
        ("invoices", "due_date", ["null", "integer"]),
        ("coupons", "percent_off", ["null", "number"]),
        ("prices", "unit_amount_decimal", ["null", "string"]),  # a decimal, rendered as a string
        ("customers", "email", ["null", "string"]),
        ("customers", "updated", ["null", "integer"]),  # ours: the cursor
        ("charges", "deleted", ["null", "boolean"]),  # ours: tombstones
    ],
)
def test_types_and_nullability_follow_stripe(stream: str, field: str, expected: Any) -> None:
    assert load_schema(stream)["properties"][field]["type"] == expected


def test_expanded_references_are_objects_and_others_ids() -> None:
    discounts = load_schema("subscriptions")["properties"]["discounts"]

    assert discounts["items"]["type"] == "object"
    assert load_schema("invoices")["properties"]["discounts"]["items"]["type"] == "string"


@pytest.mark.emulator
def test_every_record_the_source_reads_from_the_emulator_meets_its_schema(
    emulator_factory: Callable[..., Emulator],
) -> None:
    emulator = emulator_factory(customers=60, seed=11)
    emulator.advance(days=5)  # cancellations, failed payments, deleted customers
    catalog = CatalogBuilder()
    for name in NAMES:
        catalog.with_stream(
            ConfiguredAirbyteStreamBuilder().with_name(name).with_sync_mode(SyncMode.incremental)
        )
    config = {"api_key": "sk_test_perly_demo", "base_url": emulator.url, "max_requests_per_second": 1000}

    output = read(SourcePerlyStripe(), config, catalog.build())

    validators = {name: jsonschema.Draft7Validator(load_schema(name)) for name in NAMES}
    errors = [
        f"{m.record.stream} {m.record.data.get('id')}: {e.json_path} {e.message[:120]}"
        for m in output.records
        for e in validators[m.record.stream].iter_errors(m.record.data)
    ]
    assert {m.record.stream for m in output.records} == set(NAMES)
    assert errors[:20] == []
