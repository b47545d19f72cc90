"""The Stripe streams the source offers, declared as data: where each lives, how it is listed and
re-fetched, which events change it, and which restricted-key permission reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Params = tuple[tuple[str, str | int], ...]


@dataclass(frozen=True)
class StreamDef:
    name: str
    path: str  # the list endpoint
    object_type: str  # Stripe's `object` value of the stream's records
    permission: str  # the restricted-key permission (rak_ slug) that reads it
    list_params: Params = ()
    retrieve_params: Params = ()
    event_types: tuple[str, ...] = ()  # billing events that change an object of this stream
    cursor_field: str = "updated"

    def retrieve_path(self, object_id: str) -> str:
        return f"{self.path}/{object_id}"


OBJECT_STREAMS: tuple[StreamDef, ...] = (
    StreamDef(
        name="customers",
        path="/v1/customers",
        object_type="customer",
        permission="rak_customer_read",
        event_types=(
            "customer.created",
            "customer.updated",
            "customer.deleted",
            "customer.discount.created",
            "customer.discount.updated",
            "customer.discount.deleted",
        ),
    ),
    StreamDef(
        name="subscriptions",
        path="/v1/subscriptions",
        object_type="subscription",
        permission="rak_subscription_read",
        # The default list leaves out canceled subscriptions: churn is exactly what we must see.
        # Discounts (the subscription's and its items') are expanded: as ids they say nothing. Only
        # what the subscription permission reads is expanded: a coupon, product or price tiers would
        # need their own permission, and Stripe refuses the whole request without it.
        list_params=(
            ("status", "all"),
            ("expand[]", "data.discounts"),
            ("expand[]", "data.items.data.discounts"),
        ),
        retrieve_params=(("expand[]", "discounts"), ("expand[]", "items.data.discounts")),
        event_types=(
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
            "customer.subscription.paused",
            "customer.subscription.resumed",
            "customer.subscription.pending_update_applied",
            "customer.subscription.pending_update_expired",
            "customer.subscription.trial_will_end",
        ),
    ),
    StreamDef(
        name="invoices",
        path="/v1/invoices",
        object_type="invoice",
        permission="rak_invoice_read",
        event_types=(
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
    ),
    StreamDef(
        name="charges",
        path="/v1/charges",
        object_type="charge",
        permission="rak_charge_read",
        event_types=(
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
    ),
    StreamDef(
        name="coupons",
        path="/v1/coupons",
        object_type="coupon",
        permission="rak_coupon_read",
        event_types=("coupon.created", "coupon.updated", "coupon.deleted"),
    ),
    StreamDef(
        name="prices",
        path="/v1/prices",
        object_type="price",
        permission="rak_plan_read",
        list_params=(("expand[]", "data.tiers"),),
        retrieve_params=(("expand[]", "tiers"),),
        # A plan is the legacy face of a price: same id, same permission.
        event_types=(
            "price.created",
            "price.updated",
            "price.deleted",
            "plan.created",
            "plan.updated",
            "plan.deleted",
        ),
    ),
    StreamDef(
        name="products",
        path="/v1/products",
        object_type="product",
        permission="rak_product_read",
        event_types=("product.created", "product.updated", "product.deleted"),
    ),
)

EVENTS = StreamDef(
    name="events",
    path="/v1/events",
    object_type="event",
    permission="rak_event_read",
    cursor_field="created",
)

ALL_STREAMS: tuple[StreamDef, ...] = (*OBJECT_STREAMS, EVENTS)
STREAMS_BY_NAME: dict[str, StreamDef] = {s.name: s for s in ALL_STREAMS}
STREAM_PATHS: dict[str, str] = {s.name: s.path for s in ALL_STREAMS}
CORE_STREAMS = ("customers", "subscriptions", "invoices", "charges")

# Stripe accepts at most 20 names in one events list's types[] filter.
MAX_EVENT_TYPES_PER_REQUEST = 20
# Deletion events whose object is gone for good: emit a tombstone without asking Stripe again.
# (customer.subscription.deleted only cancels: the subscription is still there and is re-fetched.)
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
# Events whose data.object is a related object that names the stream's object in one field.
RELATED_OBJECT_FIELD = {
    "charge.dispute.": "charge",
    "charge.refund.": "charge",
    "customer.discount.": "customer",
    "invoice_payment.": "invoice",
}


def event_types_for(streams: list[StreamDef]) -> list[str]:
    types: list[str] = []
    for stream in streams:
        types.extend(t for t in stream.event_types if t not in types)
    return types


def stream_for_event_type(event_type: str) -> StreamDef | None:
    return _STREAM_BY_EVENT_TYPE.get(event_type)


_STREAM_BY_EVENT_TYPE: dict[str, StreamDef] = {t: s for s in OBJECT_STREAMS for t in s.event_types}


@dataclass
class Change:
    """The newest thing an events read says about one object."""

    object_id: str
    at: int  # created of the newest event about it
    deleted: bool = False
    customer: str | None = None
    created: int | None = None  # the object's own `created`, when the event carries the object itself
    # The event's data.object when it is this object itself (not a related one, e.g. a dispute), and
    # the API version it was rendered at: often the object as a fetch would give it.
    event_object: dict[str, Any] | None = None
    api_version: str | None = None
    # Another event of the same second carries a different object, and neither is known to be later.
    ambiguous: bool = False


def lifecycle_step(stream: StreamDef, obj: dict[str, Any]) -> int:
    """How far an object is along a lifecycle that only moves on, to tell which of two events of the
    same second carries the later object: an invoice's status transitions (finalized, paid, voided,
    marked uncollectible) are set once and stay set. 0 for objects without such a lifecycle."""
    if stream.name != "invoices":
        return 0
    transitions = obj.get("status_transitions")
    return sum(1 for at in transitions.values() if at) if isinstance(transitions, dict) else 0


def lacks_expansion(stream: StreamDef, obj: dict[str, Any]) -> bool:
    """Whether an object as an event carries it lacks an expansion the stream's list and retrieve ask
    for (events are never expanded): a subscription's or its items' discounts as ids, a tiered price
    without its tiers."""
    if stream.name == "subscriptions":
        items = obj.get("items")
        holders = [obj, *(items.get("data") or [] if isinstance(items, dict) else [])]
        return any(not isinstance(d, dict) for h in holders for d in h.get("discounts") or [])
    if stream.name == "prices":
        return obj.get("billing_scheme") == "tiered" and not isinstance(obj.get("tiers"), list)
    return False


def change_from_event(event: dict[str, Any]) -> tuple[StreamDef, Change] | None:
    """Which object of which stream this event is about (None for types we do not follow)."""
    event_type = event.get("type", "")
    stream = stream_for_event_type(event_type)
    obj = (event.get("data") or {}).get("object") or {}
    if stream is None or not isinstance(obj, dict):
        return None
    object_id: Any = obj.get("id")
    created: Any = obj.get("created")
    event_object: dict[str, Any] | None = obj
    for prefix, id_field in RELATED_OBJECT_FIELD.items():
        if event_type.startswith(prefix):
            object_id = obj.get(id_field)
            if isinstance(object_id, dict):  # an expanded reference
                object_id = object_id.get("id")
            created = event_object = None  # the event's object is not the one that changed
            break
    if not isinstance(object_id, str) or not object_id:
        return None
    customer = obj.get("customer") if stream.name != "customers" else None
    return stream, Change(
        object_id=object_id,
        at=int(event.get("created") or 0),
        deleted=event_type in DELETION_EVENTS,
        customer=customer if isinstance(customer, str) else None,
        created=created if isinstance(created, int) and not isinstance(created, bool) else None,
        event_object=event_object,
        api_version=event.get("api_version"),
    )
