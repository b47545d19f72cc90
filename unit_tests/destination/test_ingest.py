"""The Ingestor with the real mapping: the write path the webhook receiver shares with the writer."""

from __future__ import annotations

import gc
import threading
from datetime import datetime
from typing import Any

import pytest

from destination_perly import ingest
from destination_perly.health.model import CustomerBundle, CustomerEvaluation, HealthConfig
from destination_perly.ingest import Ingestor
from destination_perly.store.base import Store, table_for_stream
from unit_tests.destination.builders import AS_OF, T0, FakeEngine, customer, invoice, subscription
from unit_tests.destination.conftest import StoreFactory


def test_upsert_returns_the_customers_touched_and_marks_them_pending(store: Store) -> None:
    ingestor = Ingestor(store, HealthConfig(), evaluate=FakeEngine())
    event = {
        "id": "evt_1",
        "object": "event",
        "type": "invoice.paid",
        "created": T0,
        "data": {"object": invoice("in_1", "cus_evt")},
    }
    assert ingestor.upsert("events", [event]) == {"cus_evt"}
    assert ingestor.upsert("customers", [customer("cus_1")]) == {"cus_1"}
    assert ingestor.upsert("prices", [{"id": "price_1", "updated": T0}]) == set()
    assert store.dirty_customers() == {"cus_evt", "cus_1"}
    assert store.query("SELECT customer_id FROM stripe_events") == [{"customer_id": "cus_evt"}]


def test_given_a_batch_the_store_refuses_then_it_raises_keeps_nothing_and_the_next_batch_lands(
    store: Store,
) -> None:
    """On PostgreSQL a flush is sent in one go and the refusal only surfaces at its end."""
    ingestor = Ingestor(store, HealthConfig(), evaluate=FakeEngine())
    store.ensure_stream_table("customers")
    good, _ = ingestor.prepare("customers", customer("cus_1"))
    refused = good._replace(id="cus_2", customer_id="cus_2", updated=None)  # updated is NOT NULL
    with pytest.raises(Exception, match="(?i)not.null|null value"):
        ingestor.upsert_rows({"customers": [good, refused]}, {"cus_1", "cus_2"})
    assert store.query("SELECT id FROM stripe_customers") == []
    assert store.dirty_customers() == set()
    ingestor.upsert_rows({"customers": [good]}, {"cus_1"})
    assert store.query("SELECT id FROM stripe_customers") == [{"id": "cus_1"}]
    assert store.dirty_customers() == {"cus_1"}


def test_refresh_pending_reads_the_ledger_in_pages_and_a_failing_customer_stays_for_the_next_round(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "REFRESH_PAGE", 3)
    engine = FakeEngine()
    engine.fail_for = {"cus_4"}
    ingestor = Ingestor(store, HealthConfig(), evaluate=engine)
    ingestor.upsert("customers", [customer(f"cus_{n}") for n in range(8)])

    result = ingestor.refresh_pending(AS_OF, include_time_sensitive=False)

    assert [c for c, _ in engine.calls] == [f"cus_{n}" for n in range(8)]  # each once, in id order
    assert (result.refreshed, result.failed) == (7, ["cus_4"])
    assert store.dirty_customers() == {"cus_4"}


def test_refresh_pending_covers_dirty_and_time_sensitive_customers_then_clears_them(store: Store) -> None:
    engine = FakeEngine()
    ingestor = Ingestor(store, HealthConfig(), evaluate=engine)
    store.upsert_records("subscriptions", [subscription("sub_t", "cus_trial", status="trialing")])
    ingestor.upsert("subscriptions", [subscription("sub_1", "cus_1", amount=1200)])

    result = ingestor.refresh_pending(AS_OF)

    assert result.refreshed == 2
    assert sorted(c for c, _ in engine.calls) == ["cus_1", "cus_trial"]
    assert store.dirty_customers() == set()
    snapshots = store.query(
        "SELECT customer_id, mrr_by_currency FROM perly_mrr_snapshots ORDER BY customer_id"
    )
    assert snapshots == [
        {"customer_id": "cus_1", "mrr_by_currency": '{"usd":1200}'},
        {"customer_id": "cus_trial", "mrr_by_currency": "{}"},
    ]
    ingestor.refresh(["cus_1"], AS_OF)  # unchanged MRR: no new snapshot
    assert len(store.query("SELECT * FROM perly_mrr_snapshots WHERE customer_id = 'cus_1'")) == 1


def test_given_a_webhook_write_during_a_sync_refresh_then_the_saved_health_reflects_the_newer_data(
    store_factory: StoreFactory,
) -> None:
    """The race the webhook receiver reported: a sync refresh that read a customer before a webhook
    wrote and refreshed it must not save its older evaluation last."""
    sync_store, webhook_store = store_factory.open(), store_factory.open()
    sync_store.ensure_schema()
    sync_store.upsert_records("subscriptions", [subscription("sub_1", "cus_1", amount=1000)])
    webhook_done = threading.Event()
    engine = FakeEngine()

    def slow_evaluate(bundle: CustomerBundle, config: HealthConfig, as_of: datetime) -> CustomerEvaluation:
        evaluation = engine(bundle, config, as_of)
        if threading.current_thread() is threading.main_thread():
            # Give the webhook every chance to write and refresh while this evaluation is in hand.
            webhook_done.wait(timeout=0.5)
        return evaluation

    sync = Ingestor(sync_store, HealthConfig(), evaluate=slow_evaluate)
    webhook = Ingestor(webhook_store, HealthConfig(), evaluate=FakeEngine())
    errors: list[BaseException] = []

    def deliver_webhook() -> None:
        try:
            webhook.upsert("subscriptions", [subscription("sub_1", "cus_1", updated=T0 + 60, amount=2500)])
            webhook.refresh(["cus_1"], AS_OF)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)
        finally:
            webhook_done.set()

    thread = threading.Thread(target=deliver_webhook)
    original_load = sync_store.load_stored_bundles

    def load_then_let_the_webhook_in(*args: Any, **kwargs: Any) -> Any:
        bundles = original_load(*args, **kwargs)
        if not thread.is_alive() and not webhook_done.is_set():
            thread.start()
        return bundles

    sync_store.load_stored_bundles = load_then_let_the_webhook_in  # type: ignore[method-assign]
    sync.refresh(["cus_1"], AS_OF)
    thread.join(timeout=30)
    assert not errors
    health = sync_store.query("SELECT mrr FROM perly_customer_health WHERE customer_id = ?", ("cus_1",))
    assert health == [{"mrr": 2500}]
    assert sync_store.dirty_customers() == set()


def test_given_a_stream_table_created_by_another_connection_then_bundles_include_its_rows(
    store_factory: StoreFactory,
) -> None:
    reader, writer = store_factory.open(), store_factory.open()
    reader.ensure_schema()
    assert reader.load_bundle("cus_1").invoices == []  # the reader has now seen a catalog without it
    writer.upsert_records("invoices", [invoice("in_1", "cus_1")])
    assert [i["id"] for i in reader.load_bundle("cus_1").invoices] == ["in_1"]
    assert table_for_stream("invoices") in reader.tables()


def test_given_a_refresh_that_fails_then_the_cyclic_collector_is_running_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingestor = Ingestor(store, HealthConfig(), evaluate=FakeEngine())
    ingestor.upsert("subscriptions", [subscription("sub_1", "cus_1")])
    paused_during_save: list[bool] = []

    def failing_save(*args: Any) -> None:
        paused_during_save.append(not gc.isenabled())
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "save_results", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        ingestor.refresh(["cus_1"], AS_OF)
    assert paused_during_save == [True]
    assert gc.isenabled()
    assert store.dirty_customers() == {"cus_1"}  # nothing half-saved: it stays pending


def test_given_a_subscription_naming_discounts_by_id_then_its_stored_version_expands_them(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """An event's payload names discounts by id; the sync stored them expanded. Same id, same discount:
    the stored object is kept. An id the stored version lacks is stored as it is, and logged."""
    ingestor = Ingestor(store, HealthConfig(), evaluate=FakeEngine())
    sub_discount = {"id": "di_sub", "object": "discount", "source": {"type": "coupon", "coupon": "co_20"}}
    item_discount = {"id": "di_item", "object": "discount", "source": {"type": "coupon", "coupon": "co_5"}}
    synced = subscription("sub_1", "cus_1", discounts=[sub_discount])
    synced["items"]["data"][0]["discounts"] = [item_discount]
    ingestor.upsert("subscriptions", [synced])

    from_event = subscription("sub_1", "cus_1", updated=T0 + 10, discounts=["di_sub", "di_new"])
    from_event["items"]["data"][0]["discounts"] = ["di_item"]
    ingestor.upsert("subscriptions", [from_event, subscription("sub_2", "cus_2", discounts=["di_other"])])

    stored = store.load_records("subscriptions", ["sub_1", "sub_2"])
    assert stored["sub_1"]["updated"] == T0 + 10
    assert stored["sub_1"]["discounts"] == [sub_discount, "di_new"]
    assert stored["sub_1"]["items"]["data"][0]["discounts"] == [item_discount]
    assert stored["sub_2"]["discounts"] == ["di_other"]  # nothing stored before: nothing to tell it
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("sub_1" in text and "di_new" in text for text in warnings)
    assert any("sub_2" in text and "di_other" in text for text in warnings)
