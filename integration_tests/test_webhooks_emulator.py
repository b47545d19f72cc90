"""The emulator delivers its generated events as signed webhooks to a running `perly-webhooks`:
failed payments raise flags in real time, and a later reconciliation sync agrees with the receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from destination_perly.config import open_store, parse_config
from destination_perly.ingest import Ingestor, customer_ids_of
from destination_perly.store.base import Store
from integration_tests.demo import start_receiver, stop_receiver
from integration_tests.stripe_emulator import Emulator

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

SECRET = "whsec_emulator_demo"
STREAMS = ("customers", "subscriptions", "invoices", "charges", "coupons", "prices", "products", "events")
COMPARED = ("flag_payment_failures", "payment_risk", "failed_payments_30d", "subscription_health", "deleted")


def sync_into(store: Store, emulator: Emulator) -> None:
    """A stand-in for a full sync: every object as the emulator serves it now, then health for all."""
    config = parse_config({})
    ingestor = Ingestor(store, config.health)
    touched: set[str] = set()
    for stream in STREAMS:
        objects = emulator.objects(stream)
        records = objects if stream == "events" else [{**obj, "updated": emulator.now} for obj in objects]
        touched |= ingestor.upsert(stream, records)
    ingestor.refresh(touched, datetime.fromtimestamp(emulator.now, UTC))


@pytest.fixture
def receiver_url(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    config = {"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}}
    yield_config: dict[str, Any] = dict(config)
    with Emulator(customers=80, seed=7) as seed_emulator:
        # The emulated world's clock: the receiver's health follows its events from this time on.
        yield_config["as_of"] = datetime.fromtimestamp(seed_emulator.now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp_path / "config.json").write_text(json.dumps(yield_config))
    process, url = start_receiver(tmp_path / "config.json", tmp_path / "server.log", SECRET, timeout_s=30)
    try:
        yield url, yield_config
    finally:
        stop_receiver(process)
    assert SECRET not in (tmp_path / "server.log").read_text()


def test_given_emulated_months_delivered_as_webhooks_then_failed_payments_flag_and_a_sync_agrees(
    receiver_url: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, config = receiver_url
    store = open_store(parse_config(config).store, customer_ids_of)
    store.ensure_schema()
    with Emulator(customers=80, seed=7) as emulator:
        sync_into(store, emulator)  # the initial sync, before Perly listens
        emulator.configure_webhooks(f"{url}/webhooks/stripe", SECRET)
        for _ in range(3):  # 30 days: every event delivered is still in Stripe's 30-day retention
            emulator.advance(days=10)
        assert emulator.webhooks is not None
        assert emulator.webhooks.wait_idle(120), "the emulator could not deliver its webhooks"
        attempts = emulator.webhooks.log
        assert all(entry["status"] == 200 for entry in attempts), [e for e in attempts if e["status"] != 200][
            :5
        ]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/healthz").json()["in_progress"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/healthz").json()["in_progress"] == 0, "the receiver did not catch up"

        failed = [c for c in emulator.objects("charges") if c["status"] == "failed"]
        delivered_failures = {
            e["data"]["object"]["customer"]
            for e in emulator.objects("events")
            if e["type"] == "charge.failed"
        }
        assert delivered_failures, "the emulated month had no failed payment: pick another seed"

        # Real time: each customer's health counts its failed charges of the 30 days before its as_of.
        rows = {r["customer_id"]: r for r in store.query("SELECT * FROM perly_customer_health")}
        flagged = 0
        for customer_id in delivered_failures:
            row = rows[customer_id]
            as_of = int(datetime.fromisoformat(row["as_of"].replace("Z", "+00:00")).timestamp())
            window = {
                c["id"] for c in failed if c["customer"] == customer_id and as_of - 30 * 86400 < c["created"]
            }
            assert row["failed_payments_30d"] == len(window), customer_id
            assert row["flag_payment_failures"] == (len(window) >= 2), customer_id
            assert row["payment_risk"] != "none", customer_id
            flagged += row["flag_payment_failures"]
        assert flagged, "no customer reached the payment-failure flag: pick another seed"

        # Reconciliation: the next sync into the same store converges to what a fresh full sync of the
        # same world computes. (Without it, objects Stripe changed with no event, which the emulator
        # also does to past invoices, stay as the webhooks left them: that is what the sync is for.)
        sync_into(store, emulator)
        fresh = open_store(
            parse_config({"store": {"path": str(tmp_path / "fresh.db")}}).store, customer_ids_of
        )
        fresh.ensure_schema()
        sync_into(fresh, emulator)
        webhook_rows = store.query("SELECT * FROM perly_customer_health ORDER BY customer_id")
        synced = {r["customer_id"]: r for r in fresh.query("SELECT * FROM perly_customer_health")}
        assert {row["customer_id"] for row in webhook_rows} == set(synced)
        # A customer deleted before the advanced month is known deleted only to the store that kept the
        # customer.deleted event; a fresh sync now finds neither the customer nor the (expired) event.
        listed = {c["id"] for c in emulator.objects("customers")}
        known_gone = {
            r["customer_id"] for r in webhook_rows if r["deleted"] and r["customer_id"] not in listed
        }
        disagreements = [
            (row["customer_id"], field, row[field], synced[row["customer_id"]][field])
            for row in webhook_rows
            for field in COMPARED
            if row[field] != synced[row["customer_id"]][field]
            and not (field == "deleted" and row["customer_id"] in known_gone)
        ]
        assert disagreements == [], "\n".join(map(str, disagreements))
        fresh.close()
    store.close()
