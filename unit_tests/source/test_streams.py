"""Which object an event is about: the changed-object map behind the events replay."""

from __future__ import annotations

from typing import Any

import pytest

from source_perly_stripe.streams import (
    OBJECT_STREAMS,
    STREAMS_BY_NAME,
    change_from_event,
    event_types_for,
)


def event(event_type: str, obj: dict[str, Any], created: int = 100) -> dict[str, Any]:
    return {"id": "evt_1", "object": "event", "type": event_type, "created": created, "data": {"object": obj}}


@pytest.mark.parametrize(
    ("event_type", "obj", "stream", "object_id", "deleted"),
    [
        ("customer.updated", {"id": "cus_1", "object": "customer"}, "customers", "cus_1", False),
        ("customer.deleted", {"id": "cus_1", "object": "customer"}, "customers", "cus_1", True),
        ("customer.discount.created", {"id": "di_1", "customer": "cus_1"}, "customers", "cus_1", False),
        (
            "customer.subscription.deleted",
            {"id": "sub_1", "customer": "cus_1"},
            "subscriptions",
            "sub_1",
            False,
        ),
        ("invoice.paid", {"id": "in_1", "customer": "cus_1"}, "invoices", "in_1", False),
        ("invoice.deleted", {"id": "in_1", "customer": "cus_1"}, "invoices", "in_1", True),
        ("invoice_payment.paid", {"id": "inpay_1", "invoice": "in_1"}, "invoices", "in_1", False),
        ("charge.dispute.closed", {"id": "dp_1", "charge": "ch_1"}, "charges", "ch_1", False),
        ("charge.refund.updated", {"id": "re_1", "charge": {"id": "ch_1"}}, "charges", "ch_1", False),
        ("plan.deleted", {"id": "price_1", "object": "plan"}, "prices", "price_1", True),
        ("product.updated", {"id": "prod_1"}, "products", "prod_1", False),
        ("coupon.deleted", {"id": "co_1"}, "coupons", "co_1", True),
    ],
    ids=lambda value: value if isinstance(value, str) and "." in value else "",
)
def test_given_billing_event_when_mapped_then_names_the_stream_and_object(
    event_type: str, obj: dict[str, Any], stream: str, object_id: str, deleted: bool
) -> None:
    found = change_from_event(event(event_type, obj))

    assert found is not None
    assert found[0].name == stream
    assert found[1].object_id == object_id
    assert found[1].deleted is deleted


def test_given_event_for_a_stream_we_do_not_follow_when_mapped_then_ignored() -> None:
    assert change_from_event(event("account.updated", {"id": "acct_1"})) is None
    assert change_from_event(event("charge.dispute.created", {"id": "dp_1", "charge": None})) is None


def test_given_every_stream_when_event_types_listed_then_each_billing_type_once() -> None:
    types = event_types_for(list(OBJECT_STREAMS))

    assert len(types) == len(set(types))
    assert "customer.subscription.updated" in types
    assert "invoice.upcoming" not in types, "upcoming invoices have no id to fetch"


def test_a_refetched_subscription_is_expanded_as_the_listed_ones_discounts_and_item_discounts() -> None:
    subscriptions = STREAMS_BY_NAME["subscriptions"]
    listed = [value for name, value in subscriptions.list_params if name == "expand[]"]
    refetched = [value for name, value in subscriptions.retrieve_params if name == "expand[]"]
    assert listed == ["data.discounts", "data.items.data.discounts"]
    assert [f"data.{path}" for path in refetched] == listed
