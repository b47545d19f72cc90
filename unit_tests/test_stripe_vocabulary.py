"""One Stripe vocabulary: the rules stated once, and the sync path and the webhook path held to them.

For every billing event type the source follows, Stripe's own example objects (fixtures3.json) are
sent down both paths: the source's events replay (a whole incremental sync against a fake Stripe)
and the webhook receiver's event plan. Both must store the same object, with the same owner, deleted
or not as the rules below say. Changing either path's rule alone (or the shared one) fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from destination_perly.ingest import customer_ids_of
from destination_perly.webhook_events import plan_event
from integration_tests.stripe_emulator import API_VERSION as EMULATED_VERSION
from source_perly_stripe.client import API_VERSION as SENT_VERSION
from stripe_vocabulary import API_VERSION, EVENT_TYPES, OBJECT_TYPES, event_change, tombstone
from unit_tests.source.builders import stripe_fixture
from unit_tests.source.fake_stripe import FakeStripe
from unit_tests.source.test_read import NOW, events_mode_state, records, sync
from unit_tests.webhooks.builders import event as webhook_event

DAY = 86_400
CURSOR = NOW - DAY

# ---- the rules, stated once -------------------------------------------------------------------
# Deletion events and the stream whose object they remove for good. Nothing else deletes: a
# `customer.subscription.deleted` only cancels, a `customer.discount.deleted` changes the customer.
DELETES = {
    "customer.deleted": "customers",
    "invoice.deleted": "invoices",
    "coupon.deleted": "coupons",
    "price.deleted": "prices",
    "plan.deleted": "prices",
    "product.deleted": "products",
}
# Who owns an object of each stream: the customer itself, the customer its `customer` names, nobody.
OWNER_FIELD = {
    "customers": "id",
    "subscriptions": "customer",
    "invoices": "customer",
    "charges": "customer",
    "coupons": None,
    "prices": None,
    "products": None,
}
# The Stripe object each event type carries as data.object (fixtures3.json's name for it).
CARRIED = {
    "customer.discount.": "discount",
    "customer.subscription.": "subscription",
    "customer.": "customer",
    "invoice_payment.": "invoice_payment",
    "invoice.": "invoice",
    "charge.dispute.": "dispute",
    "charge.refund.": "refund",
    "charge.": "charge",
    "coupon.": "coupon",
    "price.": "price",
    "plan.": "plan",
    "product.": "product",
}


def account() -> dict[str, dict[str, Any]]:
    """Stripe's example objects, linked to each other (the fixtures' charge is a guest's) and created
    inside the synced range."""
    objects = {
        name: stripe_fixture(name) for name in (*OBJECT_TYPES.values(), *CARRIED.values()) if name != "event"
    }
    customer_id, charge_id = objects["customer"]["id"], objects["charge"]["id"]
    objects["charge"]["customer"] = customer_id
    objects["discount"]["customer"] = customer_id
    objects["dispute"]["charge"] = charge_id
    objects["refund"]["charge"] = {**objects["charge"]}  # an expanded reference
    objects["invoice_payment"]["invoice"] = objects["invoice"]["id"]
    for obj in objects.values():
        obj["created"] = NOW - 30 * DAY
    return objects


def carried_object(event_type: str, objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects[next(name for prefix, name in CARRIED.items() if event_type.startswith(prefix))]


def expected(stream: str, event_type: str, objects: dict[str, dict[str, Any]]) -> tuple[str, bool, list[str]]:
    """(object id, deleted, owners) of what an event about this stream's example object must store."""
    changed = objects[OBJECT_TYPES[stream]]
    owner_field = OWNER_FIELD[stream]
    owners = [changed[owner_field]] if owner_field else []
    return changed["id"], DELETES.get(event_type) == stream, owners


def stored(stream: str, record: dict[str, Any]) -> tuple[str, bool, list[str]]:
    return record["id"], record.get("deleted") is True, customer_ids_of(stream, record)


def via_sync(stream: str, event_type: str, objects: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What the source emits for this stream after reading the event (an incremental sync)."""
    fake = FakeStripe()
    changed = objects[OBJECT_TYPES[stream]]
    fake.objects[stream][changed["id"]] = changed
    fake.add_event(event_type, carried_object(event_type, objects), CURSOR + 100)
    if event_type in DELETES:
        fake.delete(stream, changed["id"])
    return records(sync(fake, stream, state=events_mode_state(stream, CURSOR)), stream)


BILLING_EVENTS = [(stream, event_type) for stream, types in EVENT_TYPES.items() for event_type in types]


@pytest.mark.parametrize(("stream", "event_type"), BILLING_EVENTS, ids=[t for _, t in BILLING_EVENTS])
def test_given_a_billing_event_then_sync_and_webhook_store_the_same_object_owner_and_deletion(
    stream: str, event_type: str
) -> None:
    objects = account()
    want = expected(stream, event_type, objects)

    [synced] = via_sync(stream, event_type, objects)
    plan = plan_event(webhook_event(event_type, carried_object(event_type, objects), CURSOR + 100))

    assert stored(stream, synced) == want
    carried = carried_object(event_type, objects)
    if carried["object"] == synced["object"] or want[1]:
        # The event carries the changed object (or deletes it): the webhook stores what the sync does.
        [hooked] = plan.records[stream]
        assert stored(stream, hooked) == want
        if want[1]:
            assert hooked == synced, "one tombstone shape"
    else:
        # A related object (a dispute, a refund, a discount, a plan's face of a price): only a fetch
        # gives the changed object, and the webhook receiver has no API access; the next sync fetches it.
        assert stream not in plan.records


def test_every_deletion_event_is_followed_by_the_source() -> None:
    assert set(DELETES) <= {t for types in EVENT_TYPES.values() for t in types}


@pytest.mark.parametrize(
    ("event_type", "obj", "change"),
    [
        pytest.param(
            "customer.discount.deleted",
            {"id": "di_1", "object": "discount", "customer": "cus_1"},
            ("customers", "cus_1", False, None, False),
            id="discount-names-its-customer",
        ),
        pytest.param(
            "invoice.upcoming",
            {"id": "in_1", "object": "invoice", "customer": {"id": "cus_2"}},
            ("invoices", "in_1", False, "cus_2", True),
            id="unlisted-type-by-object-type",
        ),
        pytest.param("invoice.upcoming", {"object": "invoice"}, None, id="preview-without-id"),
        pytest.param("invoiceitem.created", {"id": "ii_1", "object": "invoiceitem"}, None, id="not-a-stream"),
        pytest.param(
            "plan.updated",
            {"id": "price_1", "object": "plan"},
            ("prices", "price_1", False, None, False),
            id="plan-is-a-price-face",
        ),
    ],
)
def test_given_an_event_then_its_change_names_stream_object_deletion_owner_and_whether_it_carries_it(
    event_type: str, obj: dict[str, Any], change: tuple[Any, ...] | None
) -> None:
    found = event_change({"type": event_type, "data": {"object": obj}})
    got = (
        None
        if found is None
        else (found.stream, found.object_id, found.deleted, found.customer, found.carries_object)
    )
    assert got == change


def test_a_tombstone_names_the_owner_only_of_customer_owned_objects() -> None:
    assert tombstone("invoices", "in_1", "cus_1", 5) == {
        "id": "in_1",
        "object": "invoice",
        "deleted": True,
        "customer": "cus_1",
        "updated": 5,
    }
    assert tombstone("customers", "cus_1", "cus_1", 5) == {
        "id": "cus_1",
        "object": "customer",
        "deleted": True,
        "updated": 5,
    }
    assert tombstone("products", "prod_1", None, 5) == {
        "id": "prod_1",
        "object": "product",
        "deleted": True,
        "updated": 5,
    }


def test_one_pinned_api_version_sent_rendered_and_required_of_webhooks() -> None:
    assert API_VERSION == stripe.api_version == "2026-10-28.endive"
    assert SENT_VERSION == EMULATED_VERSION == API_VERSION
    wrong = webhook_event(
        "customer.updated", stripe_fixture("customer"), NOW, api_version="2025-01-27.acacia"
    )
    assert plan_event(wrong).ignored
