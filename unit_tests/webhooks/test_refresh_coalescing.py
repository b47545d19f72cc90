"""Under a stream of events the refresher coalesces: refreshes start at most every
REFRESH_INTERVAL_SECONDS, each covering what queued meanwhile, and the health they leave equals a full
recomputation; a customer another process refreshed since its last write is not evaluated again; a
backlog's events are marked applied as their customers are done, not all at the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from destination_perly.config import open_store, parse_config
from destination_perly.health import evaluate_customer
from destination_perly.ingest import Ingestor, customer_ids_of
from destination_perly.webhook_apply import (
    REFRESH_INTERVAL_SECONDS,
    Connection,
    EventLedger,
    WebhookProcessor,
)
from destination_perly.webhook_events import plan_event
from unit_tests.webhooks.builders import T0, customer, delivery, event, failed_charge, subscription
from unit_tests.webhooks.conftest import FakeClock, Receiver, sqlite_config, store_opener

DAY = 86400
CUSTOMERS = 3


def trickle() -> list[dict[str, Any]]:
    """Sign-ups and subscriptions, then failed charges taking turns between the customers."""
    events = []
    for n in range(CUSTOMERS):
        events += [
            event("customer.created", customer(f"cus_{n}"), T0 - 30 * DAY),
            event("customer.subscription.created", subscription(f"sub_{n}", f"cus_{n}"), T0 - 20 * DAY),
        ]
    for k in range(12):
        created = T0 - (12 - k) * DAY
        events.append(
            event("charge.failed", failed_charge(f"ch_{k}", f"cus_{k % CUSTOMERS}", created=created), created)
        )
    return events


def every_row(receiver: Receiver) -> dict[str, list[dict[str, Any]]]:
    return {
        table: receiver.rows(f"SELECT * FROM {table} ORDER BY customer_id, {order}")
        for table, order in (
            ("perly_customer_health", "customer_id"),
            ("perly_mrr_movements", "at, kind"),
            ("perly_plan_changes", "at, kind"),
            ("perly_mrr_snapshots", "at"),
        )
    }


def test_given_events_trickling_in_then_refreshes_are_spaced_and_leave_what_a_full_refresh_computes(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[float] = []
    refresh_batch = WebhookProcessor._refresh_batch

    def spy(self: WebhookProcessor, connection: Any, batch: Any) -> None:
        starts.append(time.monotonic())
        refresh_batch(self, connection, batch)

    monkeypatch.setattr(WebhookProcessor, "_refresh_batch", spy)
    events = trickle()
    for each in events:  # each answered (stored) before the next is sent, as a steady trickle
        assert receiver.post(delivery(each)).status_code == 200
        time.sleep(0.005)
    receiver.wait()

    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= REFRESH_INTERVAL_SECONDS * 0.8  # (a thread switch between sleep and start)
    assert len(starts) < len(events)  # one refresh covered several events
    applied = receiver.rows("SELECT COUNT(*) AS n FROM perly_webhook_events WHERE applied_ms IS NOT NULL")
    assert applied == [{"n": len(events)}]

    left = every_row(receiver)
    assert len(left["perly_customer_health"]) == CUSTOMERS
    assert all(row["failed_payments_30d"] == 4 for row in left["perly_customer_health"])
    Ingestor(receiver.store, parse_config(receiver.config).health).refresh(
        [f"cus_{n}" for n in range(CUSTOMERS)], receiver.clock()
    )
    assert every_row(receiver) == left


def test_given_another_process_refreshed_a_customer_since_its_last_write_then_a_dirty_only_refresh_skips_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = parse_config(sqlite_config(tmp_path))
    evaluated: list[str] = []

    def counting(bundle: Any, health: Any, as_of: Any) -> Any:
        evaluated.append(bundle.customer_id)
        return evaluate_customer(bundle, health, as_of)

    store, other = (open_store(config.store, customer_ids_of) for _ in range(2))
    store.ensure_schema()
    receiver = Ingestor(store, config.health, evaluate=counting)
    touched = receiver.upsert_streams({"customers": [customer("cus_done"), customer("cus_open")]})
    Ingestor(other, config.health).refresh(["cus_done"], clock())  # e.g. the other worker process

    receiver.refresh(touched, clock(), dirty_only=True)
    assert evaluated == ["cus_open"]
    assert [r["customer_id"] for r in store.query("SELECT customer_id FROM perly_customer_health")] == [
        "cus_done",
        "cus_open",
    ]
    assert store.dirty_customers() == set()

    # A write after that refresh makes the customer dirty again: it is refreshed.
    receiver.upsert_streams({"customers": [{**customer("cus_done", name="Renamed"), "updated": T0 + 60}]})
    receiver.refresh(["cus_done", "cus_open"], clock(), dirty_only=True)
    assert evaluated == ["cus_open", "cus_done"]
    [health] = store.query("SELECT name FROM perly_customer_health WHERE customer_id = ?", ("cus_done",))
    assert health["name"] == "Renamed"
    store.close()
    other.close()


def test_given_a_backlog_batch_then_its_events_are_marked_applied_group_by_group_in_arrival_order(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("destination_perly.webhook_apply.REFRESH_CHUNK_CUSTOMERS", 2)
    config = parse_config(sqlite_config(tmp_path))

    make_store = store_opener(config)

    processor = WebhookProcessor(make_store, lambda store: Ingestor(store, config.health), clock, None)
    connection = Connection(make_store, lambda store: Ingestor(store, config.health))
    connection.ledger.ensure()
    names = ["cus_a", "cus_b", "cus_a", "cus_c", "cus_d"]
    plans = [plan_event(event("customer.created", customer(name), T0 + n)) for n, name in enumerate(names)]
    written = WebhookProcessor._write_all(connection, plans)
    marked: list[list[str]] = []
    mark_applied = EventLedger.mark_applied

    def spy(self: EventLedger, event_ids: list[str], applied_ms: int) -> int:
        marked.append(list(event_ids))
        return mark_applied(self, event_ids, applied_ms)

    monkeypatch.setattr(EventLedger, "mark_applied", spy)
    processor._refresh_batch(
        connection, [(p.event_id, ids) for p, (_, ids) in zip(plans, written, strict=True)]
    )

    ids = [p.event_id for p in plans]
    assert marked == [ids[:3], ids[3:]]  # cus_a's second event was covered by the first group
    assert connection.ledger.pending() == []
    health = connection.store.query(
        "SELECT customer_id, name FROM perly_customer_health ORDER BY customer_id"
    )
    assert [row["customer_id"] for row in health] == ["cus_a", "cus_b", "cus_c", "cus_d"]
    connection.close()
