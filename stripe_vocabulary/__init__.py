"""What Perly knows about Stripe's objects, said once for the source and the destination alike.

- `API_VERSION`: the pinned Stripe API version whose shapes are read, stored and rendered.
- Streams and their object types; which event types change which object, which ones delete it.
- `customer_of(stream, record)`: the customer who owns a record (or tombstone, or event).
- `event_change(event)`: which object an event changes, whether it is gone, and its owner.
- `tombstone(...)`: the record that says an object was deleted.
- `ref_id` / `unix_seconds`: reading an id reference and a unix time defensively.

Pure data and functions: no I/O, no clock, no Airbyte. The source (sync path) and the destination's
webhook receiver both import it, so they cannot disagree about an event or an owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

StripeObject = dict[str, Any]

# The version `stripe==16.1.0` pins (`stripe.api_version`): sent as `Stripe-Version` by the source,
# rendered by the emulator, required of webhook events.
API_VERSION = "2026-10-28.endive"

EVENTS_STREAM = "events"
# Stream -> Stripe's `object` value of its records.
OBJECT_TYPES: dict[str, str] = {
    "customers": "customer",
    "subscriptions": "subscription",
    "invoices": "invoice",
    "charges": "charge",
    "coupons": "coupon",
    "prices": "price",
    "products": "product",
    EVENTS_STREAM: "event",
}
# Object type -> stream, for the objects streams hold (events aside).
STREAM_OF_OBJECT: dict[str, str] = {
    kind: name for name, kind in OBJECT_TYPES.items() if name != EVENTS_STREAM
}

# Streams whose objects belong to one customer through their `customer` field.
CUSTOMER_OWNED_STREAMS = frozenset({"subscriptions", "invoices", "charges"})
# Account-wide catalog objects: they belong to nobody.
CATALOG_STREAMS = frozenset({"coupons", "prices", "products", "plans"})

# The billing event types that change an object of each stream.
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "customers": (
        "customer.created",
        "customer.updated",
        "customer.deleted",
        "customer.discount.created",
        "customer.discount.updated",
        "customer.discount.deleted",
    ),
    "subscriptions": (
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "customer.subscription.trial_will_end",
    ),
    "invoices": (
        "invoice.created",
        "invoice.updated",
        "invoice.deleted",
        "invoice.finalized",
        "invoice.finalization_failed",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "invoice.marked_uncollectible",
        "invoice.voided",
        "invoice.overdue",
        "invoice.overpaid",
        "invoice.will_be_due",
        "invoice.sent",
        "invoice_payment.paid",
    ),
    "charges": (
        "charge.succeeded",
        "charge.failed",
        "charge.pending",
        "charge.captured",
        "charge.expired",
        "charge.refunded",
        "charge.updated",
        "charge.refund.updated",
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    ),
    "coupons": ("coupon.created", "coupon.updated", "coupon.deleted"),
    # A plan is the legacy face of a price: same id, same permission.
    "prices": (
        "price.created",
        "price.updated",
        "price.deleted",
        "plan.created",
        "plan.updated",
        "plan.deleted",
    ),
    "products": ("product.created", "product.updated", "product.deleted"),
}
STREAM_OF_EVENT_TYPE: dict[str, str] = {t: name for name, types in EVENT_TYPES.items() for t in types}

# Deletion events whose object is gone for good: a tombstone, nothing left to fetch.
# Not `customer.subscription.deleted`: it only cancels (the subscription is still listed with
# status=canceled, and churn needs it). Not `customer.discount.deleted`: the customer stays.
DELETION_EVENTS = frozenset(
    {
        "customer.deleted",
        "invoice.deleted",
        "coupon.deleted",
        "price.deleted",
        "plan.deleted",
        "product.deleted",
    }
)
# Events whose data.object is a related object that names the changed object in one field.
RELATED_OBJECT_FIELD: dict[str, str] = {
    "charge.dispute.": "charge",
    "charge.refund.": "charge",
    "customer.discount.": "customer",
    "invoice_payment.": "invoice",
}


def ref_id(value: Any) -> str | None:
    """The id of a reference that may be an id string or an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def unix_seconds(value: Any) -> int | None:
    """A Stripe time field (unix seconds) as an int; None when absent or not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def owner_of(obj: StripeObject) -> str | None:
    """The customer an object belongs to: a customer itself, else the one its `customer` names."""
    if obj.get("object") == "customer":
        return ref_id(obj.get("id"))
    return ref_id(obj.get("customer"))


def customer_of(stream: str, record: Any) -> str | None:
    """The customer who owns a record of this stream (object, tombstone or event); None for catalog
    objects, guest charges and anything malformed. An event belongs to its object's owner."""
    if not isinstance(record, dict) or stream in CATALOG_STREAMS:
        return None
    if stream == "customers":
        return ref_id(record.get("id"))
    if stream == EVENTS_STREAM:
        data = record.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        return owner_of(obj) if isinstance(obj, dict) else None
    return owner_of(record)


@dataclass(frozen=True)
class EventChange:
    """Which object one event changes."""

    stream: str
    object_id: str
    deleted: bool  # gone for good: store a tombstone
    customer: str | None  # the owner, when the event's object names it
    # True when data.object is the changed object as its stream stores it (not a related object such
    # as a dispute, nor a price's legacy `plan` face): only then can it be stored as it is.
    carries_object: bool
    created: int | None  # the changed object's own `created`, when the event carries it


def event_change(event: Any) -> EventChange | None:
    """The object an event changes; None for objects no stream holds (or an event naming none).

    Listed billing types are mapped by type; any other event by its object's type."""
    if not isinstance(event, dict):
        return None
    event_type = event.get("type")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(event_type, str) or not isinstance(obj, dict):
        return None
    stream = STREAM_OF_EVENT_TYPE.get(event_type) or STREAM_OF_OBJECT.get(str(obj.get("object")))
    if stream is None:
        return None
    related = next(
        (field for prefix, field in RELATED_OBJECT_FIELD.items() if event_type.startswith(prefix)), None
    )
    object_id = ref_id(obj.get(related) if related else obj.get("id"))
    if object_id is None:
        return None
    return EventChange(
        stream=stream,
        object_id=object_id,
        deleted=event_type in DELETION_EVENTS,
        customer=None if related else owner_of(obj),
        carries_object=related is None and obj.get("object") == OBJECT_TYPES[stream],
        created=None if related else unix_seconds(obj.get("created")),
    )


def tombstone(stream: str, object_id: str, customer: str | None, updated: int) -> StripeObject:
    """A deleted object as a record: Stripe's deleted shape, the owner of a customer-owned object
    (so the store still knows whose health changed), and the version time."""
    record: StripeObject = {"id": object_id, "object": OBJECT_TYPES[stream], "deleted": True}
    if customer and stream in CUSTOMER_OWNED_STREAMS:
        record["customer"] = customer
    record["updated"] = updated
    return record
