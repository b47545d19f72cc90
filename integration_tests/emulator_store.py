"""A Perly store filled in-process from an emulator's book, with health computed at the emulator's now:
what a first sync leaves behind, without the Airbyte pipes (for the backtest's tests and benchmark)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from destination_perly.health import HealthConfig
from destination_perly.ingest import Ingestor
from destination_perly.store.base import Store
from destination_perly.store.sqlite import SqliteStore
from integration_tests.stripe_emulator import Emulator

STREAMS = ("products", "prices", "coupons", "customers", "subscriptions", "invoices", "charges", "events")
# Rendered as the source lists them (its `expand[]` in source_perly_stripe/streams.py).
EXPANDED = {"subscriptions": "discounts", "prices": "tiers"}


def synced_store(emulator: Emulator, path: Path | str, config: HealthConfig | None = None) -> SqliteStore:
    store = SqliteStore(path)
    fill(emulator, store, config)
    return store


def fill(emulator: Emulator, store: Store, config: HealthConfig | None = None) -> None:
    """Every object the source would read, then health for every customer at the emulator's now."""
    store.ensure_schema()
    ingestor = Ingestor(store, config or HealthConfig())
    for stream in STREAMS:
        ingestor.upsert(stream, emulator.objects(stream, variant=EXPANDED.get(stream, "")))
    ingestor.refresh_pending(datetime.fromtimestamp(emulator.now, UTC))
