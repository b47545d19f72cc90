"""The Stripe streams the source offers, declared as data: where each lives, how it is listed and
re-fetched, and which restricted-key permission reads it. What Stripe's objects and events mean
(object types, which events change or delete what, owners) is `stripe_vocabulary`'s, shared with
the destination's webhook receiver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stripe_vocabulary import EVENT_TYPES, OBJECT_TYPES, event_change

Params = tuple[tuple[str, str | int], ...]


@dataclass(frozen=True)
class StreamDef:
    name: str
    path: str  # the list endpoint
    permission: str  # the restricted-key permission (rak_ slug) that reads it
    list_params: Params = ()
    retrieve_params: Params = ()
    cursor_field: str = "updated"

    @property
    def object_type(self) -> str:
        """Stripe's `object` value of the stream's records."""
        return OBJECT_TYPES[self.name]

    @property
    def event_types(self) -> tuple[str, ...]:
        """The billing events that change an object of this stream."""
        return EVENT_TYPES.get(self.name, ())

    def retrieve_path(self, object_id: str) -> str:
        return f"{self.path}/{object_id}"


OBJECT_STREAMS: tuple[StreamDef, ...] = (
    StreamDef(
        name="customers",
        path="/v1/customers",
        permission="rak_customer_read",
    ),
    StreamDef(
        name="subscriptions",
        path="/v1/subscriptions",
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
    ),
    StreamDef(
        name="invoices",
        path="/v1/invoices",
        permission="rak_invoice_read",
    ),
    StreamDef(
        name="charges",
        path="/v1/charges",
        permission="rak_charge_read",
    ),
    StreamDef(
        name="coupons",
        path="/v1/coupons",
        permission="rak_coupon_read",
    ),
    StreamDef(
        name="prices",
        path="/v1/prices",
        permission="rak_plan_read",
        list_params=(("expand[]", "data.tiers"),),
        retrieve_params=(("expand[]", "tiers"),),
    ),
    StreamDef(
        name="products",
        path="/v1/products",
        permission="rak_product_read",
    ),
)

EVENTS = StreamDef(
    name="events",
    path="/v1/events",
    permission="rak_event_read",
    cursor_field="created",
)

ALL_STREAMS: tuple[StreamDef, ...] = (*OBJECT_STREAMS, EVENTS)
STREAMS_BY_NAME: dict[str, StreamDef] = {s.name: s for s in ALL_STREAMS}
STREAM_PATHS: dict[str, str] = {s.name: s.path for s in ALL_STREAMS}
CORE_STREAMS = ("customers", "subscriptions", "invoices", "charges")

# Stripe accepts at most 20 names in one events list's types[] filter.
MAX_EVENT_TYPES_PER_REQUEST = 20


def event_types_for(streams: list[StreamDef]) -> list[str]:
    types: list[str] = []
    for stream in streams:
        types.extend(t for t in stream.event_types if t not in types)
    return types


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
    """Which object of which stream this event is about (None for objects no stream holds)."""
    found = event_change(event)
    if found is None:
        return None
    return STREAMS_BY_NAME[found.stream], Change(
        object_id=found.object_id,
        at=int(event.get("created") or 0),
        deleted=found.deleted,
        customer=found.customer,
        created=found.created,
        event_object=event["data"]["object"] if found.carries_object else None,
        api_version=event.get("api_version"),
    )
