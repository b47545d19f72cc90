"""The Ingestor with the real mapping: the write path the webhook receiver shares with the writer."""

from __future__ import annotations

from destination_perly.health.model import HealthConfig
from destination_perly.ingest import Ingestor
from destination_perly.store.base import Store
from unit_tests.destination.builders import AS_OF, T0, FakeEngine, customer, invoice, subscription


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
