"""Two receivers on one PostgreSQL schema (two instances in-process; `perly-webhooks --workers 2`):
interleaved duplicate deliveries apply once, the newest version of an object wins; an idle receiver
refreshes what a busy one stored."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

with warnings.catch_warnings():
    # starlette 1.x suggests httpx2 for its TestClient; the installed httpx works the same.
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

from destination_perly.config import open_store, parse_config
from destination_perly.ingest import Ingestor, customer_ids_of
from destination_perly.webhook_apply import EventLedger, WebhookProcessor
from destination_perly.webhook_events import plan_event
from destination_perly.webhooks import DEFAULT_PATH, create_app, settings_from_config
from integration_tests.demo import start_receiver, stop_receiver
from integration_tests.postgres import postgres_dsn, store_settings
from unit_tests.webhooks.builders import SECRET, T0, customer, delivery, event, failed_charge, subscription
from unit_tests.webhooks.conftest import FakeClock, store_opener

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


def test_given_two_worker_processes_when_a_burst_comes_shuffled_and_twice_then_each_applies_once_newest_wins(
    pg_config: dict[str, Any], tmp_path: Path
) -> None:
    """The deployed `perly-webhooks --workers 2`: two processes, each with its writer and refresher, on
    one schema; every event delivered twice, in a shuffled order over 8 connections (a subscription's
    update may come before its creation)."""
    events = [e for n in range(CUSTOMERS) for e in history(n)]
    deliveries = events + events
    random.Random(13).shuffle(deliveries)
    config = {**pg_config, "as_of": "2026-11-01T00:00:00Z"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    process, url = start_receiver(
        tmp_path / "config.json", tmp_path / "server.log", SECRET, timeout_s=60, extra_args=["--workers", "2"]
    )
    parsed = parse_config(config)
    store = open_store(parsed.store, customer_ids_of)
    try:
        # Both workers are up: each holds a writer's and a refresher's connection.
        deadline = time.monotonic() + 30
        while len(connections := receiver_connections(store)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(connections) == 4

        def deliver(each: dict[str, Any]) -> str:
            response = httpx.post(f"{url}{DEFAULT_PATH}", **delivery(each), timeout=30)
            assert response.status_code == 200, response.text
            return str(response.json()["status"])

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(deliver, deliveries))
        assert statuses.count("accepted") == len(events)
        assert statuses.count("duplicate") == len(events)
        while time.monotonic() < deadline + 60 and store.query(
            "SELECT COUNT(*) AS n FROM perly_webhook_events WHERE applied_ms IS NULL"
        ) != [{"n": 0}]:
            time.sleep(0.1)
    finally:
        stop_receiver(process)

    try:
        ledger = store.query("SELECT event_id, applied_ms FROM perly_webhook_events")
        assert len(ledger) == len(events)
        assert all(row["applied_ms"] for row in ledger)
        assert len(store.query("SELECT id FROM stripe_events")) == len(events)
        # The newer version of each subscription (quantity 1) won, whichever arrived last.
        subscriptions = store.query("SELECT id, data FROM stripe_subscriptions ORDER BY id")
        assert len(subscriptions) == CUSTOMERS
        assert all(orjson.loads(row["data"])["items"]["data"][0]["quantity"] == 1 for row in subscriptions)
        health = store.query("SELECT * FROM perly_customer_health ORDER BY customer_id")
        assert len(health) == CUSTOMERS
        assert all(row["flag_payment_failures"] == 1 for row in health)
        # What the two processes left equals one clean recomputation.
        movements = store.query("SELECT * FROM perly_mrr_movements ORDER BY customer_id, at, kind")
        Ingestor(store, parsed.health).refresh(
            [f"cus_pg_{n}" for n in range(CUSTOMERS)], datetime.fromtimestamp(T0, UTC)
        )
        assert store.query("SELECT * FROM perly_mrr_movements ORDER BY customer_id, at, kind") == movements
        assert store.query("SELECT * FROM perly_customer_health ORDER BY customer_id") == health
    finally:
        store.close()


def receiver_connections(store: Any) -> list[dict[str, Any]]:
    """The store connections of `perly-webhooks` processes on this server (not this test's own)."""
    return store.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = ? AND pid <> pg_backend_pid()",
        ("destination-perly",),
    )


def two_processors(
    pg_config: dict[str, Any], gate: threading.Event
) -> tuple[WebhookProcessor, WebhookProcessor]:
    """Two receivers on one schema, as `--workers 2` runs them; both help the other, as on PostgreSQL.
    The first one's refresher is held at `gate` (busy with other work, or stalled) before it reads
    which customers are dirty, its first step."""
    parsed = parse_config(pg_config)
    opener = store_opener(parsed)
    clock = FakeClock(datetime.fromtimestamp(T0, UTC))

    def open_gated() -> Any:
        store = opener()
        dirty_marks = store.dirty_marks

        def gated(customer_ids: Any) -> dict[str, int]:
            assert gate.wait(60), "the test never opened the gate"
            return dirty_marks(customer_ids)

        store.dirty_marks = gated  # type: ignore[method-assign]
        return store

    def make_ingestor(store: Any) -> Ingestor:
        return Ingestor(store, parsed.health)

    gated = WebhookProcessor(open_gated, make_ingestor, clock, help_other_receivers=True)
    free = WebhookProcessor(opener, make_ingestor, clock, help_other_receivers=True)
    return gated, free


def wait_for(condition: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not (met := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(met)


def test_given_one_receiver_busy_when_it_stored_a_burst_then_the_other_refreshes_health(
    pg_config: dict[str, Any],
) -> None:
    """The connections a burst comes over may all go to one `--workers` process: the other one's
    refresher, idle, takes the refreshes of what the first stored, each event applied once."""
    gate = threading.Event()
    busy, idle = two_processors(pg_config, gate)
    events = [e for n in range(CUSTOMERS) for e in history(n)]
    store = open_store(parse_config(pg_config).store, customer_ids_of)
    busy.start()
    idle.start()
    try:
        outcomes = [busy.submit(plan_event(each)).result(30) for each in events]
        assert {outcome.value for outcome in outcomes} == {"accepted"}

        def unapplied() -> int:
            return int(
                store.query("SELECT COUNT(*) AS n FROM perly_webhook_events WHERE applied_ms IS NULL")[0]["n"]
            )

        assert wait_for(lambda: unapplied() == 0), "the idle receiver did not refresh the busy one's events"
        assert idle.stats()["helped"] == len(events)
        assert busy.stats()["applied"] == 0  # its refresher is still held
        health = store.query("SELECT * FROM perly_customer_health ORDER BY customer_id")
        assert len(health) == CUSTOMERS
        assert all(row["flag_payment_failures"] == 1 for row in health)
        assert store.query("SELECT customer_id FROM perly_dirty_customers") == []
        movements = store.query("SELECT * FROM perly_mrr_movements ORDER BY customer_id, at, kind")

        gate.set()  # the busy receiver comes to its own events: done already, nothing evaluated twice
        assert busy.wait_idle(30)
        assert busy.stats()["applied"] == len(events)
        assert store.query("SELECT * FROM perly_customer_health ORDER BY customer_id") == health
        assert store.query("SELECT * FROM perly_mrr_movements ORDER BY customer_id, at, kind") == movements
    finally:
        gate.set()
        busy.stop()
        idle.stop()
        store.close()


def test_given_a_customer_held_by_another_refresh_then_a_helping_receiver_leaves_it_and_takes_the_rest(
    pg_config: dict[str, Any],
) -> None:
    """A helper does not wait for the customers another refresh holds (that one is doing them): their
    events stay pending until they are free, the other customers' events are applied meanwhile."""
    gate = threading.Event()
    busy, idle = two_processors(pg_config, gate)
    events = [e for n in range(3) for e in history(n)]
    holder = open_store(parse_config(pg_config).store, customer_ids_of)
    store = open_store(parse_config(pg_config).store, customer_ids_of)
    busy.start()
    idle.start()

    def pending_customers() -> set[str]:
        return {customer for _, customers in EventLedger(store).pending() for customer in customers}

    try:
        with holder.transaction():
            holder.lock_customers(["cus_pg_1"])  # as a refresh of cus_pg_1 would
            assert {busy.submit(plan_event(each)).result(30).value for each in events} == {"accepted"}
            assert wait_for(lambda: pending_customers() == {"cus_pg_1"})
            time.sleep(0.3)  # several more rounds of looking: still left to the holder
            assert pending_customers() == {"cus_pg_1"}
        assert wait_for(lambda: pending_customers() == set())
        assert idle.stats()["helped"] == len(events)
        health = store.query("SELECT customer_id, flag_payment_failures FROM perly_customer_health")
        assert sorted(health, key=lambda row: row["customer_id"]) == [
            {"customer_id": f"cus_pg_{n}", "flag_payment_failures": 1} for n in range(3)
        ]
    finally:
        gate.set()
        busy.stop()
        idle.stop()
        holder.close()
        store.close()


def test_given_an_event_with_nul_characters_then_it_is_applied_with_u_fffd(pg_config: dict[str, Any]) -> None:
    """PostgreSQL's text cannot hold NUL (U+0000): such an event was stored, but its customer's health
    refresh failed at every attempt."""
    named = customer("cus_nul", name="Acme\x00 Ltd", email="a\x00@x.io")
    settings = settings_from_config(pg_config, [SECRET], clock=FakeClock(datetime.fromtimestamp(T0, UTC)))
    with TestClient(create_app(settings)) as client:
        response = client.post(DEFAULT_PATH, **delivery(event("customer.created", named, T0 - 100)))
        assert settings.processor.wait_idle(20)

    assert (response.status_code, response.json()["status"]) == (200, "accepted")
    store = open_store(parse_config(pg_config).store)
    try:
        health = store.query("SELECT name, email FROM perly_customer_health WHERE customer_id = 'cus_nul'")
    finally:
        store.close()
    assert health == [{"name": "Acme\ufffd Ltd", "email": "a\ufffd@x.io"}]
