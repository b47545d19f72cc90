"""The source against the local Stripe emulator: what a backfill emits is what the emulator holds,
and after the emulator's clock moves on, an incremental sync brings the folded records (newest
`updated` per id, as the store keeps them) back to the emulator's current objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from airbyte_cdk.models import AirbyteStateMessage, AirbyteStreamStatus, SyncMode  # type: ignore[attr-defined]
from airbyte_cdk.test.catalog_builder import CatalogBuilder, ConfiguredAirbyteStreamBuilder
from airbyte_cdk.test.entrypoint_wrapper import EntrypointOutput, read

from integration_tests.stripe_emulator import Emulator
from source_perly_stripe.source import SourcePerlyStripe
from source_perly_stripe.streams import ALL_STREAMS, OBJECT_STREAMS, event_types_for

pytestmark = pytest.mark.emulator

OBJECT_NAMES = [s.name for s in OBJECT_STREAMS]
ALL_NAMES = [s.name for s in ALL_STREAMS]
# What each stream's comparison looks at besides the id: the fields Perly's health rules read.
ESSENTIALS = {
    "customers": ("email", "created"),
    "subscriptions": ("status", "cancel_at_period_end", "customer", "created"),
    "invoices": ("status", "amount_due", "amount_remaining", "customer", "created"),
    "charges": ("status", "amount", "customer", "created"),
    "coupons": ("duration", "percent_off", "amount_off"),
    "prices": ("unit_amount", "active", "product"),
    "products": ("name", "active"),
}


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(customers=150, seed=5) as running:
        yield running


def sync(
    emulator: Emulator, names: list[str], key: str = "sk_test_perly_demo", state: list[Any] | None = None
) -> EntrypointOutput:
    catalog = CatalogBuilder()
    for name in names:
        catalog.with_stream(
            ConfiguredAirbyteStreamBuilder().with_name(name).with_sync_mode(SyncMode.incremental)
        )
    config = {"api_key": key, "base_url": emulator.url, "max_requests_per_second": 1000}
    return read(SourcePerlyStripe(), config, catalog.build(), state)


def next_state(output: EntrypointOutput, previous: list[AirbyteStateMessage] | None = None) -> list[Any]:
    last: dict[str, Any] = {}
    for message in [*(previous or []), *(m.state for m in output.state_messages)]:
        last[message.stream.stream_descriptor.name] = message
    return list(last.values())


def fold(outputs: list[EntrypointOutput], stream: str) -> dict[str, dict[str, Any]]:
    """Latest version per id, as the destination keeps it: newer `updated` wins, ties go to the later."""
    folded: dict[str, dict[str, Any]] = {}
    for output in outputs:
        for message in output.records:
            if message.record.stream != stream:
                continue
            record = message.record.data
            known = folded.get(record["id"])
            if known is None or record["updated"] >= known["updated"]:
                folded[record["id"]] = record
    return {i: r for i, r in folded.items() if not r.get("deleted")}


def essentials(stream: str, obj: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(obj.get(name) for name in ESSENTIALS[stream])


def emulator_view(emulator: Emulator, stream: str) -> dict[str, tuple[Any, ...]]:
    return {o["id"]: essentials(stream, o) for o in emulator.objects(stream) if not o.get("deleted")}


def without_nulls(obj: dict[str, Any], *leave_out: str) -> dict[str, Any]:
    """Top-level fields that carry a value: the emulator's `objects()` leaves null fields out, its API
    sends them, as Stripe does. `updated` is the source's own field."""
    return {k: v for k, v in obj.items() if v is not None and k not in ("updated", *leave_out)}


def test_given_seeded_book_when_backfill_then_every_object_is_emitted_once(emulator: Emulator) -> None:
    output = sync(emulator, ALL_NAMES)

    assert not output.errors
    for stream in OBJECT_NAMES:
        emitted = [m.record.data for m in output.records if m.record.stream == stream]
        assert len(emitted) == len({r["id"] for r in emitted}), f"{stream}: duplicates"
        held = emulator_view(emulator, stream)
        assert {r["id"]: essentials(stream, r) for r in emitted} == held, stream
    # Whole objects, as listed with the backfill's expansions; embedded lists complete.
    for stream, variant, sublist in (("subscriptions", "discounts", "items"), ("invoices", "", "lines")):
        emitted_objects = {
            m.record.data["id"]: m.record.data for m in output.records if m.record.stream == stream
        }
        for held_object in emulator.objects(stream, variant=variant):
            mine = emitted_objects[held_object["id"]]
            assert without_nulls(mine, sublist) == without_nulls(held_object, sublist), held_object["id"]
            mine_ids = {item["id"] for item in mine[sublist]["data"]}
            held_ids = {item["id"] for item in held_object[sublist]["data"]}
            assert mine[sublist]["has_more"] is False
            assert mine_ids >= held_ids
            if held_object[sublist]["has_more"]:  # Stripe embeds only the first ones; the rest are paged
                assert len(mine_ids) > len(held_ids)
            else:
                assert mine_ids == held_ids
    billing = set(event_types_for(list(OBJECT_STREAMS)))
    held_events = emulator.objects("events")
    held = {e["id"] for e in held_events if e["type"] in billing}
    assert {m.record.data["id"] for m in output.records if m.record.stream == "events"} == held


def test_given_backfill_then_clock_advances_when_incremental_then_store_matches_emulator(
    emulator: Emulator,
) -> None:
    first = sync(emulator, ALL_NAMES)
    requests_before = len(emulator.request_log)
    emulator.advance(days=3)

    second = sync(emulator, ALL_NAMES, state=next_state(first))

    assert not second.errors
    for stream in OBJECT_NAMES:
        folded = fold([first, second], stream)
        assert {i: essentials(stream, r) for i, r in folded.items()} == emulator_view(emulator, stream), (
            stream
        )
    incremental_requests = len(emulator.request_log) - requests_before
    changed = sum(1 for m in second.records if m.record.stream != "events")
    assert incremental_requests <= changed + 40, "an incremental sync costs in proportion to the changes"


def test_given_billing_restricted_key_when_syncs_then_four_streams_complete_and_others_named(
    emulator: Emulator,
) -> None:
    first = sync(emulator, ALL_NAMES, key="rk_test_perly_billing")
    emulator.advance(days=2)
    second = sync(emulator, ALL_NAMES, key="rk_test_perly_billing", state=next_state(first))

    assert not first.errors
    assert not second.errors
    statuses = {
        m.trace.stream_status.stream_descriptor.name: m.trace.stream_status.status
        for m in second.trace_messages
        if m.trace.stream_status
    }
    for stream in ("customers", "subscriptions", "invoices", "charges"):
        assert statuses[stream] == AirbyteStreamStatus.COMPLETE
        folded = fold([first, second], stream)
        assert {i: essentials(stream, r) for i, r in folded.items()} == emulator_view(emulator, stream), (
            stream
        )
    for stream, permission in (("prices", "rak_plan_read"), ("events", "rak_event_read")):
        assert statuses[stream] == AirbyteStreamStatus.INCOMPLETE
        named = [m.log.message for m in second.logs if m.log.message.startswith(f"{stream}: skipped")]
        assert len(named) == 1
        assert permission in named[0]
    assert second.is_in_logs("what can still change")


BILLING_FOUR = ["customers", "subscriptions", "invoices", "charges"]


def whole_objects(outputs: list[EntrypointOutput], stream: str) -> dict[str, dict[str, Any]]:
    """The latest version of every object, as the store keeps it, without the source's `updated`."""
    return {i: without_nulls(r) for i, r in fold(outputs, stream).items()}


@pytest.mark.parametrize(("seed", "days"), [(5, 1), (17, 3), (23, 9)])
def test_given_key_without_events_when_incremental_then_store_equals_a_fresh_full_read_for_fewer_requests(
    seed: int, days: int
) -> None:
    with Emulator(customers=200, seed=seed) as emulator:
        first_requests = len(emulator.request_log)
        first = sync(emulator, BILLING_FOUR, key="rk_test_perly_billing")
        first_requests = len(emulator.request_log) - first_requests
        emulator.advance(days=days)
        before = len(emulator.request_log)
        second = sync(emulator, BILLING_FOUR, key="rk_test_perly_billing", state=next_state(first))
        reconciliation_requests = len(emulator.request_log) - before
        fresh = sync(emulator, BILLING_FOUR, key="rk_test_perly_billing")

    assert not first.errors
    assert not second.errors
    assert not fresh.errors
    for stream in BILLING_FOUR:
        assert whole_objects([first, second], stream) == whole_objects([fresh], stream), stream
    assert second.is_in_logs("what can still change")
    assert reconciliation_requests < first_requests / 2, (reconciliation_requests, first_requests)


@pytest.mark.parametrize(("seed", "days"), [(5, 1), (17, 3), (23, 9)])
def test_given_events_when_incremental_takes_objects_from_events_then_store_equals_a_fresh_full_read(
    seed: int, days: int
) -> None:
    """Changed objects are taken from their newest event where it carries them whole, and fetched
    where it does not (lists over 10 lines or 20 items, discounts and tiers not expanded, two events in
    one second): the store is the same as after a fresh read of everything."""
    with Emulator(customers=200, seed=seed) as emulator:
        first = sync(emulator, ALL_NAMES)
        emulator.advance(days=days)
        before = len(emulator.request_log)
        second = sync(emulator, ALL_NAMES, state=next_state(first))
        # Besides reading the events: what the changed objects cost (fetches, sublists, new objects).
        object_requests = sum(1 for r in emulator.request_log[before:] if r["path"] != "/v1/events")
        fresh = sync(emulator, ALL_NAMES)

    assert not first.errors
    assert not second.errors
    assert not fresh.errors
    for stream in OBJECT_NAMES:
        # Stripe changes these without an event of the object's own (an invoice numbered, a coupon
        # redeemed): no sync that follows events sees them change, whether it fetches or not.
        unevented = {"customers": ("next_invoice_sequence",), "coupons": ("times_redeemed",)}.get(stream, ())
        kept = {i: without_nulls(r, *unevented) for i, r in fold([first, second], stream).items()}
        assert kept == {i: without_nulls(r, *unevented) for i, r in fold([fresh], stream).items()}, stream
    changed = sum(1 for m in second.records if m.record.stream != "events")
    assert second.is_in_logs("taken from their newest event")
    assert object_requests < changed / 2, (object_requests, changed)
