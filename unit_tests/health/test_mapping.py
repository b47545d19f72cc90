"""Which customers a raw record affects, and which customers the clock alone can change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from destination_perly.health.model import MrrSnapshot
from destination_perly.ingest import customer_ids_of
from destination_perly.mapping import is_time_sensitive
from unit_tests.health.builders import (
    AS_OF,
    bundle,
    charge,
    customer,
    days_ago,
    discount,
    event,
    invoice,
    subscription,
)

CUSTOMER_IDS = [
    pytest.param("customers", customer(), {"cus_1"}, id="customer-itself"),
    pytest.param(
        "customers",
        {"id": "cus_9", "object": "customer", "deleted": True},
        {"cus_9"},
        id="customer-tombstone",
    ),
    pytest.param("subscriptions", subscription(), {"cus_1"}, id="subscription"),
    pytest.param("invoices", invoice(), {"cus_1"}, id="invoice"),
    pytest.param("charges", charge(), {"cus_1"}, id="charge"),
    pytest.param("charges", {**charge(), "customer": None}, set(), id="guest-charge"),
    pytest.param(
        "subscriptions", {**subscription(), "customer": {"id": "cus_2"}}, {"cus_2"}, id="expanded-customer"
    ),
    pytest.param(
        "subscriptions",
        {"id": "sub_1", "object": "subscription", "deleted": True, "customer": "cus_3"},
        {"cus_3"},
        id="tombstone-with-customer",
    ),
    pytest.param(
        "subscriptions",
        {"id": "sub_1", "object": "subscription", "deleted": True},
        set(),
        id="bare-tombstone",
    ),
    pytest.param("events", event("evt_1", 1, subscription()), {"cus_1"}, id="subscription-event"),
    pytest.param(
        "events",
        event("evt_2", 1, customer(id="cus_7"), event_type="customer.updated"),
        {"cus_7"},
        id="customer-event",
    ),
    pytest.param(
        "events",
        event("evt_3", 1, {**discount(), "customer": "cus_4"}, event_type="customer.discount.created"),
        {"cus_4"},
        id="customer-discount-event",
    ),
    pytest.param(
        "events",
        event("evt_4", 1, {"id": "co_1", "object": "coupon"}, "coupon.updated"),
        set(),
        id="coupon-event",
    ),
    pytest.param("coupons", {"id": "co_1", "object": "coupon"}, set(), id="coupon"),
    pytest.param("prices", {"id": "price_1", "object": "price"}, set(), id="price"),
    pytest.param("products", {"id": "prod_1", "object": "product"}, set(), id="product"),
    pytest.param(
        "refunds", {"id": "re_1", "customer": "cus_5"}, {"cus_5"}, id="unknown-stream-with-customer"
    ),
    pytest.param("events", {"id": "evt_bad"}, set(), id="malformed-event"),
]


@pytest.mark.parametrize(("stream", "record", "expected"), CUSTOMER_IDS)
def test_given_record_when_asking_whom_it_affects_then_its_customers_are_returned(
    stream: str, record: dict[str, Any], expected: set[str]
) -> None:
    assert set(customer_ids_of(stream, record)) == expected


OLD = days_ago(400)
TIME_SENSITIVE = [
    pytest.param(bundle([subscription()]), False, id="plain-active-settled"),
    pytest.param(bundle([subscription()], [invoice(due_date=days_ago(-3))]), True, id="open-invoice"),
    pytest.param(
        bundle([subscription()], [invoice(status="paid", amount_remaining=0)]), False, id="paid-invoice"
    ),
    pytest.param(bundle([subscription(status="trialing", trial_end=days_ago(-5))]), True, id="trial"),
    pytest.param(bundle([subscription(status="past_due")]), True, id="past-due"),
    pytest.param(bundle([subscription()], charges=[charge(days=20)]), True, id="recent-failed-charge"),
    pytest.param(bundle([subscription()], charges=[charge(days=200)]), False, id="old-failed-charge"),
    pytest.param(bundle([subscription(cancel_at=days_ago(-10))]), True, id="scheduled-cancel"),
    pytest.param(
        bundle([subscription(discounts=[discount(end=days_ago(-30))])]), True, id="discount-ends-later"
    ),
    pytest.param(
        bundle([subscription()], events=[event("evt_1", days_ago(10), subscription())]),
        True,
        id="recent-change",
    ),
    pytest.param(
        bundle([subscription()], snapshots=[MrrSnapshot(AS_OF - timedelta(days=5), {"usd": 1}, "s")]),
        True,
        id="recent-snapshot",
    ),
    pytest.param(bundle([subscription(start=days_ago(10))]), True, id="recent-start"),
    pytest.param(bundle([subscription(status="canceled", ended_at=days_ago(300))]), False, id="long-churned"),
]


@pytest.mark.parametrize(("the_bundle", "expected"), TIME_SENSITIVE)
def test_given_customer_when_asking_if_the_clock_changes_it_then_ageing_things_say_yes(
    the_bundle: Any, expected: bool
) -> None:
    assert is_time_sensitive(the_bundle, AS_OF) is expected
