"""What an incremental sync reads when the key cannot read events: per stream, the lists (with filters
Stripe really offers) that hold every object that can still change, instead of the whole account.

- customers: Stripe has no filter for changed customers, so the whole list (one request per 100);
  the deleted ones are named by the id sketch (idsketch.py) and fetched (Stripe answers `deleted`).
- subscriptions: the default list, which is every subscription not canceled (Stripe leaves
  canceled ones out unless asked); those canceled since the last sync are named by the sketch.
- invoices: `status=draft`, `status=open` and `status=uncollectible`; paid and void invoices no
  longer change (credit notes aside); those that left the three lists since are named by the sketch.
- charges: everything created in the last `recent_days` days: pending charges settle, refunds and
  most disputes come in that time. A refund or dispute on an older charge is seen only through
  events or webhooks.

Objects created since the last sync are read whole in every stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .streams import Params, StreamDef

Watched = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Reconciliation:
    # Each replaces the stream's `status` filter; `()` is the stream's own list without a status.
    filters: tuple[Params, ...] = ()
    # Whether an object is in those lists: the sketch follows these ids. None: no sketch.
    watched: Watched | None = None
    recent_days: int = 0  # also read everything created in the last days


INVOICE_STATUSES_THAT_CHANGE = ("draft", "open", "uncollectible")

RECONCILIATIONS: dict[str, Reconciliation] = {
    "customers": Reconciliation(filters=((),), watched=lambda obj: True),
    "subscriptions": Reconciliation(filters=((),), watched=lambda obj: obj.get("status") != "canceled"),
    "invoices": Reconciliation(
        filters=tuple((("status", status),) for status in INVOICE_STATUSES_THAT_CHANGE),
        watched=lambda obj: obj.get("status") in INVOICE_STATUSES_THAT_CHANGE,
    ),
    "charges": Reconciliation(recent_days=30),
}


def filtered_params(stream: StreamDef, extra: Params) -> Params:
    """The stream's list parameters with its `status` filter replaced by `extra`."""
    return (*(p for p in stream.list_params if p[0] != "status"), *extra)


def lists_everything(stream: StreamDef, rule: Reconciliation) -> bool:
    """Whether the filtered lists are the stream's whole list (customers): nothing else to read."""
    return rule.filters == ((),) and filtered_params(stream, ()) == stream.list_params
