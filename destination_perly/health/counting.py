"""Whether a subscription counts toward MRR at a moment, and `subscription_health` (contract 3-4)."""

from __future__ import annotations

from datetime import datetime

from destination_perly.health.model import RiskPolicy
from destination_perly.health.payments import days_past_due_at, invoice_subscription_id
from destination_perly.health.values import StripeObject, as_dict, text, to_time

ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
COUNTING_STATUSES = frozenset({"active", "past_due"})


def ended_at(subscription: StripeObject) -> datetime | None:
    return to_time(subscription.get("ended_at")) or (
        to_time(subscription.get("canceled_at"))
        if text(subscription.get("status")) in ENDED_STATUSES
        else None
    )


def is_ended(subscription: StripeObject, at: datetime) -> bool:
    """Ended: status canceled/incomplete_expired, or `ended_at` at or before `at`."""
    end = to_time(subscription.get("ended_at"))
    return text(subscription.get("status")) in ENDED_STATUSES or (end is not None and end <= at)


def collection_paused(subscription: StripeObject) -> bool:
    return bool(subscription.get("pause_collection"))


def has_payment_method(subscription: StripeObject, customer: StripeObject | None) -> bool:
    """A default payment method (or source) on the subscription or on its customer."""
    customer = customer or {}
    return bool(
        subscription.get("default_payment_method")
        or subscription.get("default_source")
        or as_dict(customer.get("invoice_settings")).get("default_payment_method")
        or customer.get("default_source")
    )


def set_to_cancel(subscription: StripeObject, at: datetime) -> bool:
    cancel_at = to_time(subscription.get("cancel_at"))
    return subscription.get("cancel_at_period_end") is True or (cancel_at is not None and cancel_at > at)


def oldest_past_due_days(
    subscription_id: str | None, invoices: list[StripeObject], at: datetime
) -> int | None:
    """Past-due days of the subscription's oldest invoice open at `at`."""
    days = [
        found
        for invoice in invoices
        if invoice_subscription_id(invoice) == subscription_id
        and (found := days_past_due_at(invoice, at)) is not None
    ]
    return max(days, default=None)


def is_delinquent(
    subscription: StripeObject, invoices: list[StripeObject], policy: RiskPolicy, at: datetime
) -> bool:
    """A past_due subscription whose oldest open invoice is more than the policy's days past due."""
    if subscription.get("status") != "past_due":
        return False
    days = oldest_past_due_days(subscription.get("id"), invoices, at)
    return days is not None and days > policy.delinquent_churn_days


def counts_now(
    subscription: StripeObject, invoices: list[StripeObject], policy: RiskPolicy, as_of: datetime
) -> bool:
    """The contract's rule, on the subscription as it is at `as_of`."""
    return (
        text(subscription.get("status")) in COUNTING_STATUSES
        and not is_ended(subscription, as_of)
        and not collection_paused(subscription)
        and not is_delinquent(subscription, invoices, policy, as_of)
    )


def in_trial(subscription: StripeObject, at: datetime) -> bool:
    trial_start = to_time(subscription.get("trial_start"))
    trial_end = to_time(subscription.get("trial_end"))
    return trial_end is not None and at < trial_end and (trial_start is None or trial_start <= at)


def counted_at(
    subscription: StripeObject, invoices: list[StripeObject], policy: RiskPolicy, at: datetime
) -> bool:
    """Whether this version of a subscription counted at a moment in the past.

    A version seen later tells us about earlier moments too: a canceled subscription counted until it
    ended (after any trial), an active one since its start (after any trial). Statuses that never
    count (unpaid, paused, incomplete...) are taken as holding for the whole version.
    """
    start = to_time(subscription.get("start_date")) or to_time(subscription.get("created"))
    if start is not None and at < start:
        return False
    end = ended_at(subscription)
    if end is not None and end <= at:
        return False
    status = text(subscription.get("status"))
    if status == "incomplete_expired" or in_trial(subscription, at):
        return False
    if status == "canceled":
        return end is not None and not collection_paused(subscription)
    if status not in COUNTING_STATUSES or collection_paused(subscription):
        return False
    return not is_delinquent(subscription, invoices, policy, at)


def subscription_health(
    subscriptions: list[StripeObject],
    invoices: list[StripeObject],
    policy: RiskPolicy,
    as_of: datetime,
    ever_counted: bool,
) -> str:
    """Worst wins among subscriptions not ended: at_risk > healthy > trialing; then churned or none."""
    live = [sub for sub in subscriptions if not is_ended(sub, as_of)]
    if any(
        text(sub.get("status")) in {"past_due", "unpaid", "incomplete"}
        or collection_paused(sub)
        or set_to_cancel(sub, as_of)
        for sub in live
    ):
        return "at_risk"
    if any(counts_now(sub, invoices, policy, as_of) for sub in live):
        return "healthy"
    if any(sub.get("status") == "trialing" for sub in live):
        return "trialing"
    return "churned" if ever_counted else "none"
