"""The receiver end to end in-process (starlette TestClient, SQLite store, the real Ingestor and engine)."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from destination_perly.config import open_store, parse_config
from destination_perly.ingest import Ingestor, customer_ids_of
from destination_perly.webhook_apply import EventLedger, WebhookProcessor
from destination_perly.webhook_signature import SignatureVerifier
from destination_perly.webhooks import DEFAULT_PATH, ReceiverSettings, create_app
from integration_tests.stripe_emulator import Emulator
from unit_tests.destination.test_hostile_book import spoiled
from unit_tests.webhooks.builders import (
    SECRET,
    T0,
    customer,
    delivery,
    event,
    failed_charge,
    sign,
    subscription,
)
from unit_tests.webhooks.conftest import FakeClock, Receiver, sqlite_config, store_opener


def stored(receiver: Receiver, stream: str, object_id: str) -> dict[str, Any]:
    [row] = receiver.rows(f"SELECT * FROM stripe_{stream} WHERE id = ?", (object_id,))
    return {**row, "data": orjson.loads(row["data"])}


def post_all(receiver: Receiver, *events: dict[str, Any]) -> list[str]:
    statuses = []
    for each in events:
        response = receiver.post(delivery(each))
        assert response.status_code == 200, response.text
        statuses.append(response.json()["status"])
    receiver.wait()
    return statuses


def test_given_a_subscription_event_then_object_event_and_health_are_stored(receiver: Receiver) -> None:
    post_all(
        receiver,
        event("customer.created", customer(), T0 - 100),
        event("customer.subscription.created", subscription(), T0),
    )
    row = stored(receiver, "subscriptions", "sub_A")
    assert row["updated"] == T0
    assert row["status"] == "active"
    assert row["customer_id"] == "cus_A"
    events = receiver.rows("SELECT id FROM stripe_events ORDER BY created")
    assert len(events) == 2
    health = receiver.health("cus_A")
    assert health["subscription_health"] == "healthy"
    assert health["mrr"] == 5000
    assert health["as_of"] == receiver.clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    ledger = receiver.rows("SELECT * FROM perly_webhook_events WHERE applied_ms IS NOT NULL")
    assert len(ledger) == 2


def test_given_two_failed_payments_then_the_flag_and_payment_risk_rise(receiver: Receiver) -> None:
    post_all(
        receiver,
        event("customer.created", customer(), T0 - 100),
        event("customer.subscription.created", subscription(), T0 - 90),
        event("charge.failed", failed_charge("ch_1", created=T0 - 3 * 86400), T0 - 3 * 86400),
    )
    assert receiver.health("cus_A")["flag_payment_failures"] == 0
    post_all(receiver, event("charge.failed", failed_charge("ch_2", created=T0), T0))
    health = receiver.health("cus_A")
    assert health["flag_payment_failures"] == 1
    assert health["failed_payments_30d"] == 2
    assert health["payment_risk"] in ("medium", "high")


def test_given_the_same_event_twice_then_the_second_does_nothing(receiver: Receiver) -> None:
    created = event("customer.subscription.created", subscription(), T0)
    post_all(receiver, event("customer.created", customer(), T0 - 100), created)
    first_health = receiver.health("cus_A")
    movements = receiver.rows("SELECT * FROM perly_mrr_movements")

    receiver.clock.now += timedelta(days=1)  # a refresh now would write a new as_of
    assert post_all(receiver, created) == ["duplicate"]

    assert receiver.health("cus_A") == first_health
    assert receiver.rows("SELECT * FROM perly_mrr_movements") == movements
    assert receiver.rows("SELECT COUNT(*) AS n FROM perly_webhook_events")[0]["n"] == 2
    assert receiver.settings.processor.stats()["duplicate"] == 1


def test_given_an_older_event_after_a_newer_one_then_the_newer_state_stays(receiver: Receiver) -> None:
    newer = event(
        "customer.subscription.updated",
        subscription(status="past_due"),
        T0 + 60,
        previous={"status": "active"},
    )
    older = event("customer.subscription.created", subscription(status="active"), T0)
    post_all(receiver, event("customer.created", customer(), T0 - 100), newer, older)
    assert stored(receiver, "subscriptions", "sub_A")["status"] == "past_due"
    assert receiver.health("cus_A")["subscription_health"] == "at_risk"
    # both events are kept for the movement history, whatever their arrival order
    assert len(receiver.rows("SELECT id FROM stripe_events")) == 3


def test_given_a_sync_saw_a_newer_state_then_an_older_webhook_does_not_overwrite_it(
    receiver: Receiver,
) -> None:
    sync = Ingestor(receiver.store, parse_config(receiver.config).health)
    sync.upsert(
        "subscriptions", [{**subscription(status="canceled", ended_at=T0 + 100), "updated": T0 + 200}]
    )
    post_all(receiver, event("customer.subscription.updated", subscription(status="active"), T0 + 100))
    assert stored(receiver, "subscriptions", "sub_A")["status"] == "canceled"


def test_given_a_webhook_newer_than_the_last_sync_then_it_wins(receiver: Receiver) -> None:
    sync = Ingestor(receiver.store, parse_config(receiver.config).health)
    sync.upsert("subscriptions", [{**subscription(status="active"), "updated": T0}])
    post_all(receiver, event("customer.subscription.updated", subscription(status="past_due"), T0 + 30))
    assert stored(receiver, "subscriptions", "sub_A")["status"] == "past_due"


def test_given_a_customer_deleted_then_it_is_tombstoned(receiver: Receiver) -> None:
    post_all(
        receiver, event("customer.created", customer(), T0), event("customer.deleted", customer(), T0 + 10)
    )
    row = stored(receiver, "customers", "cus_A")
    assert row["deleted"] == 1
    assert row["updated"] == T0 + 10


def test_given_a_subscription_cancelled_then_the_customer_churns(receiver: Receiver) -> None:
    post_all(
        receiver,
        event("customer.created", customer(), T0 - 100),
        event("customer.subscription.created", subscription(), T0 - 90),
    )
    cancelled = subscription(status="canceled", ended_at=T0, canceled_at=T0)
    post_all(receiver, event("customer.subscription.deleted", cancelled, T0))
    health = receiver.health("cus_A")
    assert health["subscription_health"] == "churned"
    assert health["mrr"] == 0


def test_given_an_event_type_not_used_then_200_and_nothing_stored(receiver: Receiver) -> None:
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1", "amount": 100}
    assert post_all(receiver, event("charge.dispute.created", dispute, T0)) == ["ignored"]
    assert receiver.rows("SELECT COUNT(*) AS n FROM perly_webhook_events")[0]["n"] == 0
    assert "stripe_events" not in receiver.store.tables()


def test_given_an_event_at_another_api_version_then_a_warning_and_healthz_counts_it(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrongly registered endpoint applies nothing: it must show, not pass as quiet success."""
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1", "amount": 100}
    with caplog.at_level("INFO", logger="perly.webhooks"):
        statuses = post_all(
            receiver,
            event("customer.created", customer(), T0, api_version="2020-08-27"),
            event("charge.dispute.created", dispute, T0),
        )
    assert statuses == ["ignored", "ignored"]
    assert [
        (r.levelname, "2020-08-27" in r.getMessage()) for r in caplog.records if "ignored" in r.getMessage()
    ] == [
        ("WARNING", True),
        ("INFO", False),
    ]
    stats = receiver.client.get("/healthz").json()
    assert (stats["ignored"], stats["wrong_api_version"], stats["accepted"]) == (2, 1, 0)


def test_given_a_signed_body_that_is_not_an_event_then_400(receiver: Receiver) -> None:
    body = b'{"object": "list", "data": []}'
    response = receiver.client.post(DEFAULT_PATH, content=body, headers={"Stripe-Signature": sign(body)})
    assert response.status_code == 400


def test_given_an_object_created_beyond_64_bits_then_400_and_the_next_events_are_applied(
    receiver: Receiver,
) -> None:
    """No store can hold such a `created`: the event was taken, then failed to store at every retry
    (503, for as long as Stripe retries)."""
    absurd = event("customer.created", customer("cus_far", created=1e300), T0 - 100)  # type: ignore[arg-type]

    response = receiver.post(delivery(absurd))

    assert response.status_code == 400
    assert "data.object's `created` is beyond a 64-bit integer" in response.text
    assert post_all(receiver, event("customer.created", customer(), T0 - 50)) == ["accepted"]
    assert receiver.rows("SELECT id FROM stripe_customers") == [{"id": "cus_A"}]


def test_given_a_huge_body_then_413_before_anything_else(receiver: Receiver) -> None:
    response = receiver.client.post(
        DEFAULT_PATH, content=b"x" * (3 * 1024 * 1024), headers={"Stripe-Signature": "t=1"}
    )
    assert response.status_code == 413


def test_healthz_reports_counts_and_no_secret(receiver: Receiver) -> None:
    post_all(receiver, event("customer.created", customer(), T0))
    response = receiver.client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["store"] == "ok"
    assert response.json()["accepted"] == 1
    assert response.json()["applied"] == 1
    assert SECRET not in response.text


# --- failures: nothing half-applied, nothing lost --------------------------------------------------
class FailingIngestor(Ingestor):
    def __init__(self, *args: Any, fail_upsert: bool = False, fail_refresh: bool = False) -> None:
        super().__init__(*args)
        self.fail_upsert, self.fail_refresh = fail_upsert, fail_refresh

    def upsert_streams(self, records: Any, *args: Any, **kwargs: Any) -> set[str]:
        touched = super().upsert_streams(records, *args, **kwargs)
        if self.fail_upsert and "events" in records:
            raise RuntimeError("disk full")  # after the object row: the transaction must undo it
        return touched

    def refresh(self, customer_ids: Any, as_of: datetime, **options: bool) -> Any:
        if self.fail_refresh:
            raise RuntimeError("engine crashed")
        return super().refresh(customer_ids, as_of, **options)


def _settings(tmp_path: Path, clock: FakeClock, **failures: bool) -> ReceiverSettings:
    config = parse_config(sqlite_config(tmp_path))

    make_store = store_opener(config)

    def make_ingestor(store: Any) -> Ingestor:
        return FailingIngestor(store, config.health, **failures)

    processor = WebhookProcessor(make_store, make_ingestor, clock)
    return ReceiverSettings(SignatureVerifier([SECRET]), processor, store_wait_seconds=20)


def test_given_the_store_write_fails_then_503_and_nothing_is_half_applied(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("destination_perly.webhook_apply.RETRY_BASE_SECONDS", 0.001)
    with TestClient(create_app(_settings(tmp_path, clock, fail_upsert=True))) as client:
        response = client.post(DEFAULT_PATH, **delivery(event("customer.created", customer(), T0)))
    assert response.status_code == 503  # Stripe retries it later
    reader = open_store(parse_config(sqlite_config(tmp_path)).store)
    assert reader.query("SELECT COUNT(*) AS n FROM perly_webhook_events")[0]["n"] == 0
    customers = (
        reader.query("SELECT COUNT(*) AS n FROM stripe_customers")
        if "stripe_customers" in reader.tables()
        else []
    )
    assert customers in ([], [{"n": 0}])


def test_given_the_refresh_failed_then_the_next_start_applies_the_stored_events(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("destination_perly.webhook_apply.RETRY_BASE_SECONDS", 0.001)
    broken = _settings(tmp_path, clock, fail_refresh=True)
    with TestClient(create_app(broken)) as client:
        response = client.post(DEFAULT_PATH, **delivery(event("customer.created", customer(), T0)))
        assert response.status_code == 200  # stored: Stripe must not resend it
        assert broken.processor.wait_idle(20)
        assert broken.processor.stats()["refresh_failed"] == 1
    repaired = _settings(tmp_path, clock)
    with TestClient(create_app(repaired)):
        assert repaired.processor.wait_idle(20)
    reader = open_store(parse_config(sqlite_config(tmp_path)).store)
    assert reader.query("SELECT applied_ms FROM perly_webhook_events")[0]["applied_ms"] is not None
    assert reader.query("SELECT email FROM perly_customer_health")[0]["email"] == "cus_A@example.com"
    assert EventLedger(reader).pending() == []


def test_given_emulated_time_in_the_config_then_health_follows_the_newest_event_time(tmp_path: Path) -> None:
    from destination_perly.webhooks import settings_from_config

    config = {**sqlite_config(tmp_path), "as_of": "2026-11-01T00:00:00Z"}
    settings = settings_from_config(config, [SECRET])
    with TestClient(create_app(settings)) as client:
        later = T0 + 5 * 86400
        assert (
            client.post(DEFAULT_PATH, **delivery(event("customer.created", customer(), later))).status_code
            == 200
        )
        assert settings.processor.wait_idle(20)
    reader = open_store(parse_config(config).store)
    as_of = reader.query("SELECT as_of FROM perly_customer_health")[0]["as_of"]
    assert as_of == datetime.fromtimestamp(later, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_given_the_store_locked_longer_than_stripe_waits_then_503_and_the_retry_finds_it_stored(
    tmp_path: Path, clock: FakeClock
) -> None:
    import sqlite3
    import threading

    settings = _settings(tmp_path, clock)
    settings.store_wait_seconds = 0.3
    delivered = delivery(event("customer.created", customer(), T0))
    with TestClient(create_app(settings)) as client:
        blocker = sqlite3.connect(tmp_path / "perly.db", isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")  # a long sync transaction holding the write lock
        release = threading.Timer(1.0, lambda: blocker.execute("COMMIT"))
        release.start()
        first = client.post(DEFAULT_PATH, **delivered)
        release.join()
        assert settings.processor.wait_idle(20)
        retry = client.post(DEFAULT_PATH, **delivered)
        blocker.close()
    assert first.status_code == 503
    assert retry.status_code == 200
    assert retry.json()["status"] == "duplicate"
    assert settings.processor.stats()["applied"] == 1


def test_given_a_quiet_day_then_the_receiver_recomputes_health_that_changes_with_the_clock(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = parse_config(sqlite_config(tmp_path))
    store = open_store(config.store, customer_ids_of)
    store.ensure_schema()
    ingestor = Ingestor(store, config.health)
    ingestor.upsert("customers", [customer()])
    ingestor.upsert("charges", [failed_charge("ch_1", created=T0 - 86400)])
    ingestor.refresh_pending(clock())
    assert store.query("SELECT failed_payments_30d FROM perly_customer_health")[0]["failed_payments_30d"] == 1

    make_store = store_opener(config)

    clock.now += timedelta(days=40)  # no event at all: the failure has left its 30-day window
    processor = WebhookProcessor(
        make_store, lambda s: Ingestor(s, config.health), clock, clock_refresh_seconds=0.05
    )
    processor.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            (row,) = store.query(
                "SELECT as_of, failed_payments_30d, failed_payments_90d FROM perly_customer_health"
            )
            if row["as_of"] == clock.now.strftime("%Y-%m-%dT%H:%M:%SZ"):
                break
            time.sleep(0.05)
    finally:
        processor.stop()
        store.close()
    assert row == {"as_of": "2026-12-11T01:00:00Z", "failed_payments_30d": 0, "failed_payments_90d": 1}


def discounted_sync(receiver: Receiver) -> dict[str, Any]:
    """What a sync stores: coupons, the customer, and the subscription with its discounts and its
    item's expanded (`expand[]=data.discounts`, `expand[]=data.items.data.discounts`); health refreshed.
    5000 - 500 (the item's forever amount off) = 4500, then 20% off the subscription: MRR 3600."""
    sync = Ingestor(receiver.store, parse_config(receiver.config).health)
    coupons = [
        {"id": "co_20", "object": "coupon", "percent_off": 20, "duration": "forever", "created": T0 - 999},
        {"id": "co_500", "object": "coupon", "amount_off": 500, "currency": "usd", "duration": "forever"},
    ]
    sync.upsert("coupons", coupons)
    sync.upsert("customers", [{**customer(), "updated": T0}])
    synced = subscription(discounts=[discount("di_sub", "co_20")])
    synced["items"]["data"][0]["discounts"] = [discount("di_item", "co_500")]
    sync.upsert("subscriptions", [{**synced, "updated": T0}])
    sync.refresh(["cus_A"], receiver.clock())
    assert receiver.health("cus_A")["mrr"] == 3600
    return synced


def discount(discount_id: str, coupon_id: str) -> dict[str, Any]:
    return {
        "id": discount_id,
        "object": "discount",
        "customer": "cus_A",
        "end": None,
        "start": T0 - 100 * 86400,
        "source": {"type": "coupon", "coupon": coupon_id},
        "subscription": "sub_A",
    }


def as_event_renders(sub: dict[str, Any], extra_ids: tuple[str, ...] = ()) -> dict[str, Any]:
    """`sub` as an event's payload renders it: discounts by id, the subscription's and its items'."""
    items = [{**raw, "discounts": [d["id"] for d in raw["discounts"]]} for raw in sub["items"]["data"]]
    ids = [d["id"] for d in sub["discounts"]] + list(extra_ids)
    return {**sub, "discounts": ids, "items": {**sub["items"], "data": items}}


def test_given_a_webhook_that_only_re_renders_a_discounted_subscription_then_mrr_is_unchanged(
    receiver: Receiver,
) -> None:
    synced = discounted_sync(receiver)
    movements = receiver.rows("SELECT * FROM perly_mrr_movements")
    renamed = {**synced, "metadata": {"plan": "renamed"}}
    post_all(receiver, event("customer.subscription.updated", as_event_renders(renamed), T0 + 60))
    health = receiver.health("cus_A")
    assert health["mrr"] == 3600
    assert orjson.loads(health["limitations"]) == []
    assert receiver.rows("SELECT * FROM perly_mrr_movements") == movements
    stored_sub = stored(receiver, "subscriptions", "sub_A")["data"]
    assert stored_sub["metadata"] == {"plan": "renamed"}
    assert stored_sub["discounts"] == synced["discounts"]
    assert stored_sub["items"]["data"][0]["discounts"] == synced["items"]["data"][0]["discounts"]


def test_given_a_webhook_naming_a_new_discount_then_its_discount_event_tells_it_else_the_row_says_so(
    receiver: Receiver,
) -> None:
    synced = discounted_sync(receiver)
    post_all(receiver, event("customer.subscription.updated", as_event_renders(synced, ("di_new",)), T0 + 60))
    health = receiver.health("cus_A")
    assert health["mrr"] == 3600  # di_new is left out, never guessed
    assert orjson.loads(health["limitations"]) == [
        "MRR: discount di_new of sub_A is known by its id only (a webhook's payload) and left out of MRR"
        " (the next sync tells)"
    ]
    post_all(receiver, event("customer.discount.created", discount("di_new", "co_500"), T0 + 61))
    health = receiver.health("cus_A")
    assert health["mrr"] == 3100  # 3600, then the new 500 off
    assert orjson.loads(health["limitations"]) == []


@pytest.mark.slow
def test_given_events_with_hostile_values_then_each_is_applied_or_refused_and_none_fails(
    receiver: Receiver,
) -> None:
    """The emulator's events with a tenth of their fields hostile (see test_hostile_book.py): each
    gets 200 or 400, never a 5xx that Stripe would retry for days, and the receiver stays healthy."""
    emulator = Emulator(customers=30, seed=4)
    rng = random.Random(4)
    answers = Counter()
    for each in emulator.objects("events")[-300:]:
        body = orjson.dumps(spoiled(each, rng, share=0.1))
        response = receiver.client.post(DEFAULT_PATH, content=body, headers={"Stripe-Signature": sign(body)})
        answers[response.status_code] += 1

    receiver.wait()
    assert set(answers) == {200, 400}, answers
    health = receiver.client.get("/healthz")
    assert health.status_code == 200
    stats = health.json()
    assert (stats["write_failed"], stats["refresh_failed"]) == (0, 0)
    assert stats["applied"] == stats["accepted"] > 0
