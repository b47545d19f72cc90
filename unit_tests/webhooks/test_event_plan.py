"""Which records an event becomes (pure: no store, no server)."""

from __future__ import annotations

import pytest

from destination_perly.webhook_events import MalformedEvent, plan_event
from unit_tests.webhooks.builders import T0, customer, event, failed_charge, price, subscription


def test_given_an_object_event_then_its_object_is_a_record_versioned_by_the_event_time() -> None:
    sub = subscription(status="past_due")
    plan = plan_event(event("customer.subscription.updated", sub, T0 + 50, previous={"status": "active"}))
    assert not plan.ignored
    [record] = plan.records["subscriptions"]
    assert record == {**sub, "updated": T0 + 50}
    [stored_event] = plan.records["events"]
    assert stored_event["id"] == plan.event_id
    assert stored_event["data"]["previous_attributes"] == {"status": "active"}
    assert stored_event["updated"] == T0 + 50


@pytest.mark.parametrize(
    ("event_type", "obj", "stream"),
    [
        ("customer.created", customer(), "customers"),
        ("invoice.payment_failed", {"id": "in_1", "object": "invoice", "customer": "cus_A"}, "invoices"),
        ("charge.failed", failed_charge("ch_1"), "charges"),
        ("coupon.updated", {"id": "SAVE10", "object": "coupon", "duration": "forever"}, "coupons"),
        ("price.updated", price(), "prices"),
        ("product.updated", {"id": "prod_pro", "object": "product", "name": "Pro"}, "products"),
    ],
)
def test_each_billing_object_goes_to_its_stream(event_type: str, obj: dict, stream: str) -> None:
    plan = plan_event(event(event_type, obj, T0))
    assert set(plan.records) == {stream, "events"}
    assert plan.records[stream][0]["id"] == obj["id"]


@pytest.mark.parametrize(
    ("event_type", "obj", "stream", "tombstone"),
    [
        (
            "customer.deleted",
            customer("cus_gone"),
            "customers",
            {"id": "cus_gone", "object": "customer", "deleted": True, "updated": T0},
        ),
        (
            "invoice.deleted",
            {"id": "in_draft", "object": "invoice", "customer": "cus_A", "status": "draft"},
            "invoices",
            {"id": "in_draft", "object": "invoice", "deleted": True, "updated": T0, "customer": "cus_A"},
        ),
        (
            "product.deleted",
            {"id": "prod_old", "object": "product", "name": "Old"},
            "products",
            {"id": "prod_old", "object": "product", "deleted": True, "updated": T0},
        ),
    ],
)
def test_given_a_deletion_then_the_record_is_a_tombstone(
    event_type: str, obj: dict, stream: str, tombstone: dict
) -> None:
    assert plan_event(event(event_type, obj, T0)).records[stream] == [tombstone]


def test_given_a_cancelled_subscription_event_then_the_cancelled_subscription_is_kept_not_tombstoned() -> (
    None
):
    cancelled = subscription(status="canceled", ended_at=T0)
    [record] = plan_event(event("customer.subscription.deleted", cancelled, T0)).records["subscriptions"]
    assert record["status"] == "canceled"
    assert "deleted" not in record


@pytest.mark.parametrize(
    ("event_type", "obj"),
    [
        ("charge.dispute.created", {"id": "dp_1", "object": "dispute", "charge": "ch_1"}),
        ("invoiceitem.created", {"id": "ii_1", "object": "invoiceitem", "customer": "cus_A"}),
        ("payout.paid", {"id": "po_1", "object": "payout"}),
    ],
)
def test_given_an_object_the_health_engine_does_not_use_then_the_event_is_ignored(
    event_type: str, obj: dict
) -> None:
    plan = plan_event(event(event_type, obj, T0))
    assert plan.ignored
    assert plan.records == {}


@pytest.mark.parametrize("event_type", ["customer.discount.created", "customer.discount.deleted"])
def test_given_a_discount_event_then_only_the_event_is_stored(event_type: str) -> None:
    # A subscription's event names its discounts by id: the engine finds the objects in these events.
    discount = {"id": "di_1", "object": "discount", "customer": "cus_A", "subscription": "sub_A"}
    plan = plan_event(event(event_type, discount, T0))
    assert not plan.ignored
    assert list(plan.records) == ["events"]
    assert plan.records["events"][0]["data"]["object"] == discount


def test_given_an_event_rendered_at_another_api_version_then_it_is_ignored() -> None:
    plan = plan_event(event("customer.subscription.updated", subscription(), T0, api_version="2024-06-20"))
    assert plan.ignored
    assert "api_version" in (plan.ignored_reason or "")


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"object": "list"},
        {"object": "event", "type": "customer.updated", "created": T0, "data": {"object": customer()}},
        {
            "object": "event",
            "id": "evt_1",
            "type": "customer.updated",
            "created": "soon",
            "data": {"object": customer()},
        },
        {"object": "event", "id": "evt_1", "type": "customer.updated", "created": T0, "data": {}},
        {
            "object": "event",
            "id": "evt_1",
            "type": "customer.updated",
            "created": T0,
            "data": {"object": "x"},
        },
    ],
)
def test_given_something_that_is_not_an_event_then_it_is_malformed(body: object) -> None:
    with pytest.raises(MalformedEvent):
        plan_event(body)


def test_given_an_upcoming_invoice_preview_without_id_then_the_event_is_ignored_not_rejected() -> None:
    preview = {"object": "invoice", "customer": "cus_A", "status": "draft", "amount_due": 5000}
    plan = plan_event(event("invoice.upcoming", preview, T0))
    assert plan.ignored
    assert plan.records == {}
