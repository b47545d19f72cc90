"""A realistic book with hostile values dropped into its fields (nulls, empty strings, huge and
negative numbers, wrong types, NUL characters), written by the real writer and health engine into
either store: whatever the values, the sync ends with every state acknowledged; a record that cannot
be stored is skipped and named, a customer whose health cannot be computed or stored is named and
left pending, and everyone else's health is saved. Both crashes this found (a NUL on PostgreSQL,
figures beyond 64 bits) had failed the whole sync, at every run."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from destination_perly.config import HealthConfig
from destination_perly.ingest import Ingestor
from destination_perly.store.base import Store
from destination_perly.writer import Writer, parse_input_lines, plans_from_catalog
from integration_tests.stripe_emulator import Emulator
from unit_tests.destination.messages import catalog, configured

STREAMS = ("products", "prices", "coupons", "customers", "subscriptions", "invoices", "charges", "events")
EXPANDED = {"subscriptions": "discounts", "prices": "tiers"}  # as the source lists them
HOSTILE: list[Any] = [
    None,
    "",
    "x" * 300,
    -1,
    0,
    2**62,
    -(2**62),
    1e300,
    0.5,
    [],
    {},
    True,
    "\x00",
    "2026-01-01",
]


def spoiled(value: Any, rng: random.Random, share: float, top: bool = True) -> Any:
    """`value` with about `share` of its fields (at any depth; never a top-level id) hostile."""
    if isinstance(value, dict):
        return {
            key: rng.choice(HOSTILE)
            if not (top and key == "id") and rng.random() < share
            else spoiled(item, rng, share, top=False)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [spoiled(item, rng, share, top=False) for item in value]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_given_hostile_values_in_a_book_then_every_state_is_acknowledged(store: Store, seed: int) -> None:
    emulator = Emulator(customers=30, seed=seed)
    rng = random.Random(seed)
    lines = []
    for stream in STREAMS:
        for obj in emulator.objects(stream, variant=EXPANDED.get(stream, "")):
            data = spoiled(obj, rng, share=0.2)
            lines.append(
                orjson.dumps({"type": "RECORD", "record": {"stream": stream, "data": data, "emitted_at": 0}})
            )
        state = {"stream_descriptor": {"name": stream}, "stream_state": {"updated": 1}}
        lines.append(orjson.dumps({"type": "STATE", "state": {"type": "STREAM", "stream": state}}))
    plans = plans_from_catalog(catalog(*(configured(stream) for stream in STREAMS)))
    as_of = datetime.fromtimestamp(emulator.now, UTC)
    writer = Writer(Ingestor(store, HealthConfig()), plans, as_of=lambda: as_of)

    output = list(writer.write(parse_input_lines(lines)))

    assert sum(1 for m in output if m.type.value == "STATE") == len(STREAMS)
    customers = {r["id"] for r in store.query("SELECT id FROM stripe_customers WHERE deleted = 0")}
    healthy = {r["customer_id"] for r in store.query("SELECT customer_id FROM perly_customer_health")}
    assert len(customers - healthy) <= writer.stats.refresh_failures  # each one named in the log
    assert writer.stats.malformed < len(lines) // 10  # the hostile values spoil a few records, not the book
