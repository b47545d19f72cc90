"""A webhook burst racing a running sync on the same SQLite file: no lost writes, no lock failures."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import orjson
import pytest

from destination_perly.config import open_store, parse_config
from destination_perly.ingest import Ingestor, customer_ids_of
from destination_perly.webhook_apply import now_ms
from unit_tests.webhooks.builders import T0, customer, delivery, event, subscription
from unit_tests.webhooks.conftest import Receiver

SYNC_BATCHES = 8
SYNC_BATCH_SIZE = 400
WEBHOOKS = 120


def run_sync(
    config: dict,
    errors: list[BaseException],
    started: threading.Event,
    first_webhook_in: threading.Event,
    finished_ms: list[int],
) -> None:
    """What the Airbyte writer does: big upsert transactions, each followed by a health refresh."""
    parsed = parse_config(config)
    store = open_store(parsed.store, customer_ids_of)
    try:
        ingestor = Ingestor(store, parsed.health)
        for batch in range(SYNC_BATCHES):
            customers = [
                {**customer(f"cus_sync_{batch}_{n}"), "updated": T0 + 500} for n in range(SYNC_BATCH_SIZE)
            ]
            # The sync also re-reads the webhook customers' subscriptions, later than any webhook event.
            subs = [
                {**subscription(f"sub_{n}", f"cus_hook_{n}", status="canceled"), "updated": T0 + 10_000}
                for n in range(batch, WEBHOOKS, SYNC_BATCHES * 2)
            ]
            touched = ingestor.upsert("customers", customers) | ingestor.upsert("subscriptions", subs)
            started.set()
            ingestor.refresh(touched, datetime.fromtimestamp(T0 + 3600, UTC))
            if batch == 0:  # however loaded the machine, the rest of the sync overlaps the webhooks
                first_webhook_in.wait(30)
    except BaseException as error:
        errors.append(error)
    finally:
        finished_ms.append(now_ms())
        started.set()
        store.close()


def test_given_a_sync_writing_when_webhooks_arrive_then_both_land_without_lock_errors(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException] = []
    started, first_webhook_in = threading.Event(), threading.Event()
    finished_ms: list[int] = []
    sync = threading.Thread(
        target=run_sync, args=(receiver.config, errors, started, first_webhook_in, finished_ms)
    )
    with caplog.at_level(logging.WARNING):
        sync.start()
        started.wait(30)
        statuses = []
        for n in range(WEBHOOKS):
            response = receiver.post(
                delivery(
                    event("customer.subscription.updated", subscription(f"sub_{n}", f"cus_hook_{n}"), T0 + n)
                )
            )
            statuses.append(response.status_code)
            first_webhook_in.set()
        sync.join(120)
        receiver.wait()

    assert not errors, errors
    first_received = receiver.rows("SELECT MIN(received_ms) AS t FROM perly_webhook_events")[0]["t"]
    assert first_received < finished_ms[0], "the webhooks did not overlap the sync: the test proves nothing"
    assert statuses == [200] * WEBHOOKS
    assert "locked" not in caplog.text.lower()
    # every write of both writers is there
    synced = receiver.rows("SELECT COUNT(*) AS n FROM stripe_customers WHERE id LIKE 'cus_sync_%'")[0]["n"]
    assert synced == SYNC_BATCHES * SYNC_BATCH_SIZE
    assert (
        receiver.rows("SELECT COUNT(*) AS n FROM perly_webhook_events WHERE applied_ms IS NOT NULL")[0]["n"]
        == WEBHOOKS
    )
    # and the newer version of each subscription won, whichever writer committed last
    rows = receiver.rows("SELECT id, updated, data FROM stripe_subscriptions")
    assert len(rows) == WEBHOOKS
    resynced = {f"sub_{n}" for b in range(SYNC_BATCHES) for n in range(b, WEBHOOKS, SYNC_BATCHES * 2)}
    for row in rows:
        status = orjson.loads(row["data"])["status"]
        assert (status, row["updated"] >= T0 + 10_000) == (
            ("canceled", True) if row["id"] in resynced else ("active", False)
        ), row["id"]
    health = receiver.rows(
        "SELECT COUNT(*) AS n FROM perly_customer_health WHERE customer_id LIKE 'cus_hook_%'"
    )
    assert health[0]["n"] == WEBHOOKS
