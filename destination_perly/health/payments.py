"""Invoices and charges: aging, failed payments, hard declines and `payment_risk` (contract section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from destination_perly.health.model import RiskPolicy
from destination_perly.health.values import StripeObject, as_dict, as_list, ref_id, text, to_time, whole_days

HARD_DECLINE_REASONS = frozenset(
    {"lost_card", "stolen_card", "pickup_card", "expired_card", "incorrect_number", "invalid_account"}
)
RISK_LEVELS = ("none", "low", "medium", "high", "critical")


def invoice_subscription_id(invoice: StripeObject) -> str | None:
    """The subscription an invoice bills (endive: `parent.subscription_details.subscription`)."""
    parent = as_dict(invoice.get("parent"))
    found = ref_id(as_dict(parent.get("subscription_details")).get("subscription"))
    if found:
        return found
    found = ref_id(invoice.get("subscription"))  # older API versions
    if found:
        return found
    for line in as_list(invoice.get("lines")):
        details = as_dict(as_dict(as_dict(line).get("parent")).get("subscription_item_details"))
        found = ref_id(details.get("subscription"))
        if found:
            return found
    return None


def aging_reference(invoice: StripeObject) -> datetime | None:
    """The date past-due days count from: `due_date`, else when the invoice was finalized."""
    transitions = as_dict(invoice.get("status_transitions"))
    return to_time(invoice.get("due_date")) or to_time(transitions.get("finalized_at"))


def _remaining(invoice: StripeObject) -> int:
    value = invoice.get("amount_remaining")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def is_aged(invoice: StripeObject) -> bool:
    """Only open invoices with something left to pay are aged; draft, paid, void never are."""
    return invoice.get("status") == "open" and _remaining(invoice) > 0


def days_past_due(invoice: StripeObject, as_of: datetime) -> int | None:
    """Whole days from the aging reference to `as_of` for an aged invoice, else None."""
    if not is_aged(invoice):
        return None
    reference = aging_reference(invoice)
    return None if reference is None else whole_days(reference, as_of)


def aging_bucket(days: int) -> str:
    if days <= 0:
        return "current"
    if days <= 30:
        return "1-30"
    if days <= 60:
        return "31-60"
    if days <= 90:
        return "61-90"
    return "90+"


def was_open_at(invoice: StripeObject, at: datetime) -> bool:
    """Whether the invoice was open and unpaid at `at` (from its status transitions)."""
    transitions = as_dict(invoice.get("status_transitions"))
    finalized = to_time(transitions.get("finalized_at")) or to_time(invoice.get("created"))
    if finalized is None or finalized > at:
        return False
    status = invoice.get("status")
    if status == "open":
        return _remaining(invoice) > 0
    closed_by = {"paid": "paid_at", "void": "voided_at", "uncollectible": "marked_uncollectible_at"}.get(
        str(status)
    )
    closed_at = to_time(transitions.get(closed_by)) if closed_by else None
    return closed_at is not None and at < closed_at


def days_past_due_at(invoice: StripeObject, at: datetime) -> int | None:
    """Past-due days at any moment in the past (for delinquent churn in the history)."""
    if not was_open_at(invoice, at):
        return None
    reference = aging_reference(invoice)
    return None if reference is None else whole_days(reference, at)


def is_failed(charge: StripeObject) -> bool:
    """A failed charge; an uncaptured (authorised only) charge is not a failure."""
    return charge.get("status") == "failed"


def is_hard_decline(charge: StripeObject) -> bool:
    if not is_failed(charge):
        return False
    outcome = as_dict(charge.get("outcome"))
    if outcome.get("advice_code") == "do_not_try_again":
        return True
    return text(outcome.get("reason")) in HARD_DECLINE_REASONS


def in_window(at: datetime | None, as_of: datetime, days: int) -> bool:
    return at is not None and as_of - timedelta(days=days) <= at <= as_of


@dataclass(frozen=True)
class PaymentFacts:
    failed_30d: int  # in the policy's failed-payments window
    failed_90d: int
    hard_declines_30d: int
    aged_days: tuple[tuple[str, int], ...]  # (invoice id, days past due) of aged invoices, sorted
    past_due_amount_by_currency: dict[str, int]  # open invoices 1+ days past due
    uncollectible_recent: tuple[str, ...]  # invoices marked uncollectible in the window
    retries_exhausted: tuple[str, ...]  # open auto-charged invoices with no next attempt
    not_yet_due: int  # aged invoices still current


def payment_facts(
    invoices: list[StripeObject], charges: list[StripeObject], policy: RiskPolicy, as_of: datetime
) -> PaymentFacts:
    failed = [charge for charge in charges if is_failed(charge)]
    window = policy.failed_payments_window_days
    failed_30d = [charge for charge in failed if in_window(to_time(charge.get("created")), as_of, window)]
    aged: list[tuple[str, int]] = []
    past_due: dict[str, int] = {}
    uncollectible: list[str] = []
    exhausted: list[str] = []
    for invoice in invoices:
        invoice_id = ref_id(invoice.get("id")) or "?"
        marked = to_time(as_dict(invoice.get("status_transitions")).get("marked_uncollectible_at"))
        if in_window(marked, as_of, policy.uncollectible_window_days):
            uncollectible.append(invoice_id)
        days = days_past_due(invoice, as_of)
        if days is None:
            continue
        aged.append((invoice_id, days))
        if days >= 1:
            currency = str(invoice.get("currency") or "").lower()
            past_due[currency] = past_due.get(currency, 0) + _remaining(invoice)
        automatic = invoice.get("collection_method", "charge_automatically") == "charge_automatically"
        # No next attempt on an open auto-charged invoice that was attempted: Stripe gave up retrying.
        if (
            automatic
            and invoice.get("next_payment_attempt") is None
            and invoice.get("attempted") is not False
        ):
            exhausted.append(invoice_id)
    return PaymentFacts(
        failed_30d=len(failed_30d),
        failed_90d=sum(1 for charge in failed if in_window(to_time(charge.get("created")), as_of, 90)),
        hard_declines_30d=sum(1 for charge in failed_30d if is_hard_decline(charge)),
        aged_days=tuple(sorted(aged)),
        past_due_amount_by_currency=past_due,
        uncollectible_recent=tuple(sorted(uncollectible)),
        retries_exhausted=tuple(sorted(exhausted)),
        not_yet_due=sum(1 for _, days in aged if days <= 0),
    )


def payment_risk(facts: PaymentFacts) -> str:
    """The contract's ladder, worst level first."""
    days = [days for _, days in facts.aged_days]
    worst = max(days, default=None)
    if (worst is not None and worst > 60) or facts.uncollectible_recent:
        return "critical"
    if (
        (worst is not None and worst > 30)
        or facts.failed_30d >= 3
        or facts.hard_declines_30d > 0
        or facts.retries_exhausted
    ):
        return "high"
    if (worst is not None and worst >= 1) or facts.failed_30d == 2:
        return "medium"
    if facts.failed_30d == 1 or facts.not_yet_due > 0:
        return "low"
    return "none"
