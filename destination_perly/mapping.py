"""From raw Stripe records to the health engine's inputs.

- `is_time_sensitive(bundle, as_of)`: whether a customer's health can change with the clock alone
  (and must be recomputed after every sync even when Stripe sent nothing new for them).
- `snapshot_from_row(...)`: a stored snapshot row back into an `MrrSnapshot`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from destination_perly.health.counting import is_ended
from destination_perly.health.model import CustomerBundle, MrrSnapshot, RiskPolicy
from destination_perly.health.payments import is_aged, is_failed
from destination_perly.health.values import as_dict, text, to_time


def is_time_sensitive(bundle: CustomerBundle, as_of: datetime, policy: RiskPolicy | None = None) -> bool:
    """Whether this customer's health can change with the clock alone after `as_of`.

    True when something ages or expires: an open invoice with money left (aging, payment risk,
    delinquent churn), a live trial (trial end, expiring flag), a past_due subscription, a failed
    charge still inside the 90-day window, an invoice marked uncollectible within the window, a
    scheduled cancellation or discount end, or an MRR change still inside the 30/90-day windows.
    """
    policy = policy or RiskPolicy()
    longest = timedelta(
        days=max(
            90,
            policy.failed_payments_window_days,
            policy.downgrade_window_days,
            policy.mrr_contraction_window_days,
            policy.uncollectible_window_days,
        )
    )
    if any(is_aged(invoice) for invoice in _live(bundle.invoices)):
        return True
    for invoice in _live(bundle.invoices):
        marked = to_time(as_dict(invoice.get("status_transitions")).get("marked_uncollectible_at"))
        if marked is not None and marked >= as_of - longest:
            return True
    for sub in _live(bundle.subscriptions):
        if is_ended(sub, as_of):
            continue
        if text(sub.get("status")) in {"trialing", "past_due"}:
            return True
        for key in ("cancel_at", "ended_at", "trial_end"):
            when = to_time(sub.get(key))
            if when is not None and when > as_of:
                return True
        if _discount_ends_later(sub.get("discounts"), as_of):
            return True
        started = to_time(sub.get("start_date")) or to_time(sub.get("created"))
        if started is not None and started >= as_of - longest:
            return True  # its "new" movement is still inside the 30/90-day windows
    for sub in _live(bundle.subscriptions):
        ended = to_time(sub.get("ended_at"))
        if ended is not None and as_of - longest <= ended:
            return True  # a recent churn still inside the windows
    if bundle.customer and _discount_ends_later([bundle.customer.get("discount")], as_of):
        return True
    for charge in _live(bundle.charges):
        created = to_time(charge.get("created"))
        if is_failed(charge) and created is not None and created >= as_of - longest:
            return True
    for event in _live(bundle.events):
        created = to_time(event.get("created"))
        if created is not None and created >= as_of - longest and "subscription" in str(event.get("type")):
            return True
    if bundle.snapshots and bundle.snapshots[-1].at >= as_of - longest:
        return True
    return False


def _live(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if isinstance(obj, dict) and obj.get("deleted") is not True]


def _discount_ends_later(discounts: Any, as_of: datetime) -> bool:
    for discount in discounts if isinstance(discounts, list) else []:
        end = to_time(as_dict(discount).get("end"))
        if end is not None and end > as_of:
            return True
    return False


def snapshot_from_row(at: datetime, mrr_by_currency: dict[str, int], cause: str) -> MrrSnapshot:
    """A stored snapshot row as the engine's input (currencies lower-case, amounts int)."""
    return MrrSnapshot(
        at=at,
        mrr_by_currency={str(currency).lower(): int(amount) for currency, amount in mrr_by_currency.items()},
        cause=cause,
    )
