"""Under a burst the receiver stores the queued events in one transaction; one bad event among them
fails alone, the others are stored and acknowledged. When health falls behind, writes wait for it."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from destination_perly.config import open_store, parse_config
from destination_perly.ingest import Ingestor
from destination_perly.webhook_apply import Connection, Outcome, WebhookProcessor
from destination_perly.webhook_events import plan_event
from unit_tests.webhooks.builders import T0, customer, event, subscription
from unit_tests.webhooks.conftest import FakeClock, sqlite_config, store_opener


class GatedIngestor(Ingestor):
    """Holds the write of `cus_first` until released; fails every write of `cus_poison`."""

    entered = threading.Event()
    gate = threading.Event()

    def upsert_streams(self, records: Any, *args: Any, **kwargs: Any) -> set[str]:
        ids = {record.get("id") for stream_records in records.values() for record in stream_records}
        if "cus_first" in ids:
            self.entered.set()
            self.gate.wait(20)
        if "cus_poison" in ids:
            raise ValueError("cannot store this one")
        return super().upsert_streams(records, *args, **kwargs)


def test_given_queued_events_then_they_are_stored_together_and_a_bad_one_fails_alone(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("destination_perly.webhook_apply.RETRY_BASE_SECONDS", 0.001)
    config = parse_config(sqlite_config(tmp_path))

    make_store = store_opener(config)

    batches: list[int] = []
    write_all = WebhookProcessor._write_all

    def spy(connection: Any, plans: list[Any]) -> Any:
        batches.append(len(plans))
        return write_all(connection, plans)

    monkeypatch.setattr(WebhookProcessor, "_write_all", staticmethod(spy))
    processor = WebhookProcessor(make_store, lambda store: GatedIngestor(store, config.health), clock, None)
    processor.start()
    try:
        first = processor.submit(plan_event(event("customer.created", customer("cus_first"), T0)))
        assert GatedIngestor.entered.wait(20)  # the writer is busy with it: the next ones queue up
        queued = [
            processor.submit(plan_event(event("customer.created", customer(name), T0)))
            for name in ("cus_a", "cus_poison", "cus_b")
        ]
        GatedIngestor.gate.set()

        assert first.result(20) is Outcome.ACCEPTED
        assert queued[0].result(20) is Outcome.ACCEPTED
        with pytest.raises(ValueError, match="cannot store this one"):
            queued[1].result(20)
        assert queued[2].result(20) is Outcome.ACCEPTED
        assert processor.wait_idle(20)
    finally:
        processor.stop()

    # The three queued behind the first, tried as one transaction (then each alone, one failing).
    assert [size for size in batches if size > 1] == [3]
    assert processor.stats()["accepted"] == 3
    assert processor.stats()["write_failed"] == 1
    reader = open_store(config.store)
    assert [r["id"] for r in reader.query("SELECT id FROM stripe_customers ORDER BY id")] == [
        "cus_a",
        "cus_b",
        "cus_first",
    ]
    reader.close()


@pytest.mark.parametrize("wait_seconds", [30.0, 0.2])
def test_given_health_falls_behind_then_writes_wait_for_the_backlog_to_shrink_at_most_a_while(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, wait_seconds: float
) -> None:
    monkeypatch.setattr("destination_perly.webhook_apply.REFRESH_BACKLOG_MAX_EVENTS", 2)
    monkeypatch.setattr("destination_perly.webhook_apply.BACKLOG_WAIT_SECONDS", wait_seconds)
    entered, go = threading.Event(), threading.Event()
    refresh_batch = WebhookProcessor._refresh_batch

    def stalled(self: WebhookProcessor, connection: Any, batch: Any) -> None:
        entered.set()
        go.wait(20)
        refresh_batch(self, connection, batch)

    monkeypatch.setattr(WebhookProcessor, "_refresh_batch", stalled)
    config = parse_config(sqlite_config(tmp_path))

    make_store = store_opener(config)

    processor = WebhookProcessor(make_store, lambda store: Ingestor(store, config.health), clock, None)
    processor.start()
    try:
        submit = [
            functools.partial(
                processor.submit, plan_event(event("customer.created", customer(f"cus_{n}"), T0))
            )
            for n in range(5)
        ]
        assert submit[0]().result(20) is Outcome.ACCEPTED
        assert entered.wait(20)  # the refresher holds that one; the next ones queue
        for write in submit[1:4]:
            assert write().result(20) is Outcome.ACCEPTED  # backlog 1, 2, 3 events
        over = submit[4]()
        if wait_seconds > 1:  # stored only once the refresher has taken the backlog
            time.sleep(0.5)
            assert not over.done()
            go.set()
        # (else: stored after waiting 0.2 s, with the refresher still stalled)
        assert over.result(20) is Outcome.ACCEPTED
        go.set()
        assert processor.wait_idle(20)
    finally:
        go.set()
        processor.stop()
    assert processor.stats()["applied"] == 5


def test_given_one_batch_with_two_versions_of_an_object_and_a_repeated_event_then_newest_wins_and_once(
    tmp_path: Path,
) -> None:
    """What one by one would leave: the newer version of an object whatever the order in the batch,
    of two versions at the same second the later arrival, and a repeated event id stored once."""
    config = parse_config(sqlite_config(tmp_path))
    connection = Connection(store_opener(config), lambda store: Ingestor(store, config.health))
    connection.ledger.ensure()
    newer = event("customer.subscription.updated", subscription(quantity=3), T0 + 60)
    older = event("customer.subscription.created", subscription(quantity=1), T0)
    first = event("customer.updated", customer(name="First"), T0 + 5)
    second = event("customer.updated", customer(name="Second"), T0 + 5)
    plans = [plan_event(e) for e in (newer, older, first, second, newer)]

    outcomes = [outcome for outcome, _ in WebhookProcessor._write_all(connection, plans)]

    assert outcomes == [Outcome.ACCEPTED] * 4 + [Outcome.DUPLICATE]
    store = connection.store
    [sub] = store.query("SELECT updated, data FROM stripe_subscriptions")
    assert (sub["updated"], orjson.loads(sub["data"])["items"]["data"][0]["quantity"]) == (T0 + 60, 3)
    [cus] = store.query("SELECT data FROM stripe_customers")
    assert orjson.loads(cus["data"])["name"] == "Second"
    assert len(store.query("SELECT id FROM stripe_events")) == 4
    assert len(store.query("SELECT event_id FROM perly_webhook_events")) == 4
    connection.close()
