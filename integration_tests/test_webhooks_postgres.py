"""Two receiver instances on one PostgreSQL schema: interleaved duplicate deliveries apply once."""

from __future__ import annotations

import itertools
import threading
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

with warnings.catch_warnings():
    # starlette 1.x suggests httpx2 for its TestClient; the installed httpx works the same.
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

from destination_perly.config import open_store, parse_config
from destination_perly.ingest import Ingestor, customer_ids_of
from destination_perly.webhooks import DEFAULT_PATH, create_app, settings_from_config
from integration_tests.postgres import postgres_dsn, store_settings
from unit_tests.webhooks.builders import SECRET, T0, customer, delivery, event, failed_charge, subscription

pytestmark = pytest.mark.postgres

CUSTOMERS = 12


@pytest.fixture
def pg_config() -> Iterator[dict[str, Any]]:
    schema = f"perly_wh_{uuid.uuid4().hex[:10]}"
    yield {"store": store_settings(postgres_dsn(), schema)}
    with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def history(n: int) -> list[dict[str, Any]]:
    """One customer's events: sign-up, subscription, a downgrade, two failed payments."""
    cus, sub = f"cus_pg_{n}", f"sub_pg_{n}"
    day = 86400
    return [
        event("customer.created", customer(cus), T0 - 30 * day),
        event("customer.subscription.created", subscription(sub, cus, quantity=3), T0 - 20 * day),
        event(
            "customer.subscription.updated",
            subscription(sub, cus, quantity=1),
            T0 - 10 * day,
            previous={"items": subscription(sub, cus, quantity=3)["items"]},
        ),
        event("charge.failed", failed_charge(f"ch_pg_{n}_1", cus, created=T0 - 2 * day), T0 - 2 * day),
        event("charge.failed", failed_charge(f"ch_pg_{n}_2", cus, created=T0 - day), T0 - day),
    ]


def test_given_two_receivers_on_one_schema_when_every_event_arrives_at_both_then_each_applies_once(
    pg_config: dict[str, Any],
) -> None:
    ticks = itertools.count()
    clock_lock = threading.Lock()

    def clock() -> datetime:
        # Each refresh a second later, as the wall clock would be (the receivers share it).
        with clock_lock:
            return datetime.fromtimestamp(T0 + next(ticks), UTC)

    events = [e for n in range(CUSTOMERS) for e in history(n)]
    settings = [settings_from_config(pg_config, [SECRET], clock=clock) for _ in range(2)]
    outcomes: list[list[str]] = [[], []]
    failures: list[str] = []

    def deliver(which: int, client: TestClient, order: list[dict[str, Any]]) -> None:
        for each in order:
            response = client.post(DEFAULT_PATH, **delivery(each))
            if response.status_code != 200:
                failures.append(f"{which}: {response.status_code} {response.text}")
            else:
                outcomes[which].append(response.json()["status"])

    with TestClient(create_app(settings[0])) as first, TestClient(create_app(settings[1])) as second:
        # Both get every event, one forwards and one backwards (plus a retry storm of the same ids).
        threads = [
            threading.Thread(target=deliver, args=(0, first, events + events[:10])),
            threading.Thread(target=deliver, args=(1, second, list(reversed(events)))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert all(s.processor.wait_idle(60) for s in settings)

    assert failures == []
    statuses = outcomes[0] + outcomes[1]
    assert statuses.count("accepted") == len(events), "each event id is applied by exactly one receiver"
    assert statuses.count("duplicate") == len(events) + 10

    parsed = parse_config(pg_config)
    store = open_store(parsed.store, customer_ids_of)
    try:
        ledger = store.query("SELECT event_id, applied_ms FROM perly_webhook_events")
        assert len(ledger) == len(events)
        assert all(row["applied_ms"] for row in ledger)
        health = store.query("SELECT * FROM perly_customer_health ORDER BY customer_id")
        assert len(health) == CUSTOMERS
        assert all(row["flag_payment_failures"] == 1 for row in health)
        # What the two receivers left equals one clean recomputation: no lost or doubled rows.
        movements = store.query("SELECT * FROM perly_mrr_movements ORDER BY customer_id, at, kind")
        changes = store.query("SELECT * FROM perly_plan_changes ORDER BY customer_id, at, kind")
        assert {row["kind"] for row in movements} >= {"new", "contraction"}
        Ingestor(store, parsed.health).refresh([f"cus_pg_{n}" for n in range(CUSTOMERS)], clock())
        assert store.query("SELECT * FROM perly_mrr_movements ORDER BY customer_id, at, kind") == movements
        assert store.query("SELECT * FROM perly_plan_changes ORDER BY customer_id, at, kind") == changes
        recomputed = store.query("SELECT * FROM perly_customer_health ORDER BY customer_id")
        assert [{**row, "as_of": None} for row in recomputed] == [{**row, "as_of": None} for row in health]
    finally:
        store.close()
