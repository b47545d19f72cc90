"""Discovery: every stream, its cursor and key, and a schema that accepts Stripe's example objects."""

from __future__ import annotations

import logging

import jsonschema
import pytest
from airbyte_cdk.models import SyncMode  # type: ignore[attr-defined,unused-ignore]

from source_perly_stripe.source import SourcePerlyStripe, load_schema
from source_perly_stripe.streams import ALL_STREAMS, STREAM_PATHS

from .builders import ConfigBuilder, stripe_fixture

RESOURCE_OF = {s.name: s.object_type for s in ALL_STREAMS}


def test_given_any_config_when_discover_then_all_billing_streams_with_cursor_and_key() -> None:
    catalog = SourcePerlyStripe().discover(logging.getLogger("test"), ConfigBuilder().build())

    by_name = {s.name: s for s in catalog.streams}
    assert set(by_name) == {
        "customers", "subscriptions", "invoices", "charges", "coupons", "prices", "products", "events",
    }  # fmt: skip
    for name, stream in by_name.items():
        assert stream.source_defined_primary_key == [["id"]]
        assert stream.default_cursor_field == (["created"] if name == "events" else ["updated"])
        assert SyncMode.incremental in stream.supported_sync_modes


@pytest.mark.parametrize("stream", sorted(RESOURCE_OF), ids=str)
def test_given_stripe_example_object_when_validated_then_schema_accepts_it(stream: str) -> None:
    example = stripe_fixture(RESOURCE_OF[stream])
    example["updated"] = 1_793_491_200

    jsonschema.validate(example, load_schema(stream))


@pytest.mark.parametrize("stream", sorted(RESOURCE_OF), ids=str)
def test_given_tombstone_when_validated_then_schema_accepts_it(stream: str) -> None:
    tombstone = {"id": "x_1", "object": RESOURCE_OF[stream], "deleted": True, "updated": 1_793_491_200}
    if stream == "events":
        tombstone["created"] = 1_793_491_200

    jsonschema.validate(tombstone, load_schema(stream))


def test_given_record_without_id_when_validated_then_schema_rejects_it() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"object": "customer"}, load_schema("customers"))


def test_stream_paths_name_each_list_endpoint() -> None:
    assert STREAM_PATHS["subscriptions"] == "/v1/subscriptions"
    assert STREAM_PATHS["events"] == "/v1/events"
    assert len(STREAM_PATHS) == len(ALL_STREAMS)
