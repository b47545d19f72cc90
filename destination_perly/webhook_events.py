"""Stripe webhook events -> the records the destination's write path takes.

Pure: no I/O. An event's object becomes a record of its stream exactly as the source would emit it
(docs/DESIGN.md, "Source records"), with `updated` = the event's `created`, so the store's "newer
`updated` wins" rule orders webhook and sync versions alike. The event itself goes to `events`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from destination_perly.store.base import version_beyond_int64
from stripe_vocabulary import API_VERSION, EVENTS_STREAM, event_change, tombstone

StripeObject = dict[str, Any]

# Objects stored as their event only: a subscription's event names its discounts by id, and the health
# engine finds the objects in the customer's `customer.discount.*` events (as after a sync).
EVENT_ONLY_OBJECTS = frozenset({"discount"})


class MalformedEvent(ValueError):
    """A verified body that is not a Stripe event we can read (no id, type, created or object)."""


@dataclass(frozen=True)
class EventPlan:
    """What one event means for the store. `records` is empty when the event is ignored."""

    event_id: str
    event_type: str
    created: int
    object_id: str | None
    records: dict[str, list[StripeObject]] = field(default_factory=dict)
    ignored_reason: str | None = None
    # Ignored because the endpoint renders another API version: the operator must fix the endpoint.
    wrong_api_version: bool = False

    @property
    def ignored(self) -> bool:
        return self.ignored_reason is not None


def plan_event(event: Any) -> EventPlan:
    """Read a verified event body (already parsed JSON) into the records to upsert."""
    if not isinstance(event, dict) or event.get("object") != "event":
        raise MalformedEvent("body is not a Stripe event object")
    event_id, event_type, created = event.get("id"), event.get("type"), event.get("created")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise MalformedEvent("event without id or type")
    if not isinstance(created, int) or isinstance(created, bool):
        raise MalformedEvent("event without an integer created")
    if not isinstance(obj, dict) or not isinstance(obj.get("object"), str):
        raise MalformedEvent("event without data.object")
    too_far = version_beyond_int64(obj)
    if too_far is not None:  # no store could hold it: it would fail at every retry
        raise MalformedEvent(f"data.object's `{too_far}` is beyond a 64-bit integer")

    object_type: str = obj["object"]
    object_id = obj.get("id")
    plan = EventPlan(event_id, event_type, created, object_id if isinstance(object_id, str) else None)
    if plan.object_id is None:
        # e.g. `invoice.upcoming`: a preview with no id, nothing to store (and no reason for a retry).
        return _ignored(plan, f"{object_type} without an id")
    # Which object changes, and whether it is gone, as the source reads the same event. Only an event
    # that carries that object (or deletes it) can be stored as it: for a related object (a dispute, a
    # plan's face of a price) the next sync fetches the object it changed.
    change = event_change(event)
    stored = change if change is not None and (change.deleted or change.carries_object) else None
    if stored is None and object_type not in EVENT_ONLY_OBJECTS:
        return _ignored(plan, f"object type {object_type!r} is not used by the health engine")
    api_version = event.get("api_version")
    if api_version is not None and api_version != API_VERSION:
        # Another version's shapes would overwrite good data with fields the mapping cannot read.
        reason = f"api_version {api_version!r} is not the pinned {API_VERSION!r}"
        return _ignored(plan, reason, wrong_api_version=True)

    # The events stream's cursor is `created`; `updated` is set too so the store orders every stream alike.
    records: dict[str, list[StripeObject]] = {EVENTS_STREAM: [{**event, "updated": created}]}
    if stored is not None:
        if stored.deleted:
            record = tombstone(stored.stream, stored.object_id, stored.customer, created)
        else:
            record = {**obj, "updated": created}
        records = {stored.stream: [record], **records}
    return EventPlan(
        event_id=event_id, event_type=event_type, created=created, object_id=plan.object_id, records=records
    )


def _ignored(plan: EventPlan, reason: str, wrong_api_version: bool = False) -> EventPlan:
    return EventPlan(
        plan.event_id, plan.event_type, plan.created, plan.object_id, {}, reason, wrong_api_version
    )
