"""The risk score and its reasons (contract section 8): how likely a customer is to churn (lose all MRR)
in the next 30 days, from every billing signal, each listed with the figures behind it.

Each signal carries a weight: the chance, on its own, that the customer churns within 30 days. The
signals are combined as independent pieces of evidence (a noisy OR), so the score stays in 0-100, only
grows as signals are added, and a single strong signal outranks several weak ones:

    score = round(100 x (1 - product of (1 - weight) over the signals present)), at least 1 with any

Weights (judgment from how Stripe billing ends, checked by the backtest in `destination_perly.backtest`):

    scheduled_cancellation       0.70  the customer asked to leave (cancel_at_period_end or cancel_at)
    payment_risk critical        0.50  an invoice 60+ days late or written off as uncollectible
    payment_risk high            0.35  31-60 days late, 3+ failures, a hard decline or retries exhausted
    payment_risk medium          0.15  1-30 days late or 2 failures
    payment_risk low             0.05  1 failure or an open invoice not yet due
    subscription unpaid          0.50  retries are over and Stripe stopped trying
    subscription paused          0.40  a trial ended without a way to pay
    collection paused            0.30  billing was stopped on purpose
    subscription incomplete      0.20  the first payment never went through
    subscription past_due        0.10  a renewal failed (mostly counted by payment_risk already)
    flag_trial_expiring          0.45  a trial ends within days with no payment method
    trial_without_payment_method 0.20  a trial ends later, still with no payment method
    flag_downgrade               0.15  moved to a cheaper plan in the last 90 days
    flag_mrr_contraction         0.05  plus 0.25 x the share of MRR lost over 30 days (the MRR trend)
    flag_payment_failures        0.10  on top of payment_risk: repeated failures
    flag_invoice_aging           0.10  on top of payment_risk: money owed and late
    earlier_payment_failures     0.10  failed charges 31-90 days ago: a card that failed fails again
    mrr_trend_90d                0.05  plus 0.20 x the share lost: MRR below 90 days ago (not in 30)

A customer who has already churned has no score (0, no reasons): the report shows them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from destination_perly.health.counting import collection_paused, has_payment_method, set_to_cancel
from destination_perly.health.model import CustomerHealth, PlanChange, RiskPolicy
from destination_perly.health.payments import PaymentFacts, in_window, is_failed, is_hard_decline
from destination_perly.health.values import StripeObject, as_dict, as_list, format_money, text, to_time

WEIGHTS: dict[str, float] = {
    "scheduled_cancellation": 0.70,
    "payment_risk_critical": 0.50,
    "payment_risk_high": 0.35,
    "payment_risk_medium": 0.15,
    "payment_risk_low": 0.05,
    "subscription_unpaid": 0.50,
    "subscription_paused": 0.40,
    "collection_paused": 0.30,
    "subscription_incomplete": 0.20,
    "subscription_past_due": 0.10,
    "flag_trial_expiring": 0.45,
    "trial_without_payment_method": 0.20,
    "flag_downgrade": 0.15,
    "flag_mrr_contraction": 0.05,
    "flag_payment_failures": 0.10,
    "flag_invoice_aging": 0.10,
    "earlier_payment_failures": 0.10,
    "mrr_trend_90d": 0.05,
}
MRR_TREND_WEIGHT = 0.25  # added to flag_mrr_contraction, times the share of MRR lost
LONG_TREND_WEIGHT = 0.20  # added to mrr_trend_90d, times the share of MRR lost
LONG_WINDOW_DAYS = 90
STATUS_SIGNALS = ("unpaid", "paused", "incomplete", "past_due")


@dataclass(frozen=True)
class RiskEvidence:
    """The Stripe objects behind the health row, which the reasons quote."""

    subscriptions: list[StripeObject]  # those not ended at as_of
    customer: StripeObject | None
    charges: list[StripeObject]
    facts: PaymentFacts
    downgrades: list[PlanChange]  # in the policy's downgrade window
    policy: RiskPolicy
    mrr_90d_ago: int  # in the health row's currency


@dataclass(frozen=True)
class Signal:
    name: str
    weight: float
    reason: str


def combine(weights: list[float]) -> int:
    """The noisy OR of the weights, as 0-100; at least 1 when any signal is present."""
    if not weights:
        return 0
    stays = 1.0
    for weight in weights:
        stays *= 1.0 - weight
    return max(1, min(100, round(100 * (1.0 - stays))))


def assess(health: CustomerHealth, evidence: RiskEvidence) -> tuple[int, list[str]]:
    """(risk_score, risk_reasons) for a health row whose other fields are computed."""
    if health.subscription_health == "churned":
        return 0, []
    found = signals(health, evidence)
    return combine([signal.weight for signal in found]), [signal.reason for signal in found]


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def _cancel_date(subscription: StripeObject) -> datetime | None:
    """When a subscription set to cancel ends: `cancel_at`, else the end of its current period."""
    found = to_time(subscription.get("cancel_at"))
    if found is not None:
        return found
    ends = [to_time(as_dict(item).get("current_period_end")) for item in as_list(subscription.get("items"))]
    ends.append(to_time(subscription.get("current_period_end")))  # older API versions
    return max((end for end in ends if end is not None), default=None)


def _scheduled_cancellations(evidence: RiskEvidence, as_of: datetime) -> list[Signal]:
    found = []
    for sub in evidence.subscriptions:
        if not set_to_cancel(sub, as_of):
            continue
        when = _cancel_date(sub)
        how = "cancel_at_period_end" if sub.get("cancel_at_period_end") is True else "cancel_at"
        reason = f"cancels on {_day(when) if when else 'an unknown date'} ({how})"
        feedback = text(as_dict(sub.get("cancellation_details")).get("feedback"))
        requested = to_time(sub.get("canceled_at"))
        if requested is not None:
            reason += f", requested on {_day(requested)}"
        if feedback:
            reason += f", feedback: {feedback}"
        found.append((when or as_of, str(sub.get("id")), reason))
    if not found:
        return []
    reasons = [reason for _, _, reason in sorted(found)]
    return [Signal("scheduled_cancellation", WEIGHTS["scheduled_cancellation"], "; ".join(reasons))]


def _recent_failures(evidence: RiskEvidence, as_of: datetime) -> list[StripeObject]:
    """The failed charges of the policy's window, oldest first."""
    window = evidence.policy.failed_payments_window_days
    return sorted(
        (
            charge
            for charge in evidence.charges
            if is_failed(charge) and in_window(to_time(charge.get("created")), as_of, window)
        ),
        key=lambda charge: (to_time(charge.get("created")) or as_of, str(charge.get("id"))),
    )


def _failures_text(failed: list[StripeObject], window: int) -> str:
    figure = f"{len(failed)} failed charge{'s' if len(failed) != 1 else ''} in {window} days"
    if not failed:
        return figure
    last = failed[-1]
    code = text(last.get("failure_code")) or text(as_dict(last.get("outcome")).get("reason")) or "unknown"
    created = to_time(last.get("created"))
    return f"{figure}, last: {code}" + (f" on {_day(created)}" if created else "")


def _payment_causes(evidence: RiskEvidence, as_of: datetime) -> dict[str, list[str]]:
    """The payment_risk ladder's causes (contract section 4), by the level each one reaches."""
    facts = evidence.facts
    causes: dict[str, list[str]] = {}

    def add(level: str, cause: str) -> None:
        causes.setdefault(level, []).append(cause)

    for invoice_id, days in facts.aged_days:
        if days > 60:
            add("critical", f"invoice {invoice_id} is {days} days past due")
        elif days > 30:
            add("high", f"invoice {invoice_id} is {days} days past due")
        elif days >= 1:
            add("medium", f"invoice {invoice_id} is {days} days past due")
    for invoice_id in facts.uncollectible_recent:
        add("critical", f"invoice {invoice_id} was marked uncollectible")
    failed = _recent_failures(evidence, as_of)
    failures = _failures_text(failed, evidence.policy.failed_payments_window_days)
    if facts.failed_30d >= 3:
        add("high", failures)
    elif facts.failed_30d == 2:
        add("medium", failures)
    elif facts.failed_30d == 1:
        add("low", failures)
    if facts.hard_declines_30d:
        hard = [charge for charge in failed if is_hard_decline(charge)]
        codes = sorted({text(as_dict(c.get("outcome")).get("reason")) or "do_not_try_again" for c in hard})
        add("high", f"{facts.hard_declines_30d} hard decline(s): {', '.join(codes)}")
    for invoice_id in facts.retries_exhausted:
        add("high", f"Stripe's retries are exhausted on invoice {invoice_id}")
    if facts.not_yet_due:
        add("low", f"{facts.not_yet_due} open invoice(s) not yet due")
    return causes


def _amounts(by_currency: dict[str, int]) -> str:
    """Every currency's amount (currencies are never added together)."""
    return ", ".join(format_money(amount, code) for code, amount in sorted(by_currency.items()))


def _mrr_fall(name: str, slope: float, before: int, days: int, health: CustomerHealth) -> Signal:
    """MRR lower than `days` ago: the signal's weight grows with the share lost (the MRR trend)."""
    lost = (before - health.mrr) / before
    return Signal(
        name,
        WEIGHTS[name] + slope * lost,
        f"MRR fell from {format_money(before, health.currency)} to "
        f"{format_money(health.mrr, health.currency)} in the last {days} days (-{lost:.0%})",
    )


def signals(health: CustomerHealth, evidence: RiskEvidence) -> list[Signal]:
    """Every billing signal present, strongest first, each with the sentence that explains it."""
    as_of, policy = health.as_of, evidence.policy
    found = _scheduled_cancellations(evidence, as_of)

    if health.payment_risk in ("low", "medium", "high", "critical"):
        level = health.payment_risk
        causes = "; ".join(_payment_causes(evidence, as_of).get(level, [])) or "see its invoices and charges"
        name = f"payment_risk_{level}"
        found.append(Signal(name, WEIGHTS[name], f"payment risk {level}: {causes}"))

    for status in STATUS_SIGNALS:
        ids = sorted(str(sub.get("id")) for sub in evidence.subscriptions if sub.get("status") == status)
        if ids:
            reason = f"subscription {', '.join(ids)} is {status}"
            found.append(Signal(f"subscription_{status}", WEIGHTS[f"subscription_{status}"], reason))
    paused = sorted(
        (str(sub.get("id")), text(as_dict(sub.get("pause_collection")).get("behavior")) or "paused")
        for sub in evidence.subscriptions
        if collection_paused(sub)
    )
    if paused:
        listed = ", ".join(f"{sub_id} ({behavior})" for sub_id, behavior in paused)
        reason = f"collection paused on {listed}"
        found.append(Signal("collection_paused", WEIGHTS["collection_paused"], reason))

    trials = sorted(
        (end, str(sub.get("id")))
        for sub in evidence.subscriptions
        if sub.get("status") == "trialing"
        and (end := to_time(sub.get("trial_end"))) is not None
        and end >= as_of
        and not has_payment_method(sub, evidence.customer)
    )
    if health.flag_trial_expiring and trials:
        end, sub_id = trials[0]
        hours = int((end - as_of).total_seconds() // 3600)
        found.append(
            Signal(
                "flag_trial_expiring",
                WEIGHTS["flag_trial_expiring"],
                f"Trial of {sub_id} ends {end.strftime('%Y-%m-%d %H:%M')} UTC (in {hours} hours) "
                "with no payment method on file",
            )
        )
    elif trials:
        end, sub_id = trials[0]
        found.append(
            Signal(
                "trial_without_payment_method",
                WEIGHTS["trial_without_payment_method"],
                f"Trial of {sub_id} ends on {_day(end)} (in {(end - as_of).days} days) "
                "with no payment method on file",
            )
        )

    if health.flag_downgrade and evidence.downgrades:
        last = max(evidence.downgrades, key=lambda change: (change.at, change.subscription_id))
        found.append(
            Signal(
                "flag_downgrade",
                WEIGHTS["flag_downgrade"],
                f"Downgraded from {last.from_tier or last.from_plan} to {last.to_tier or last.to_plan} "
                f"on {_day(last.at)}",
            )
        )
    if health.flag_mrr_contraction and health.mrr_30d_ago > 0:
        window = policy.mrr_contraction_window_days
        found.append(_mrr_fall("flag_mrr_contraction", MRR_TREND_WEIGHT, health.mrr_30d_ago, window, health))
    if not health.flag_mrr_contraction and 0 <= health.mrr < evidence.mrr_90d_ago:
        found.append(
            _mrr_fall("mrr_trend_90d", LONG_TREND_WEIGHT, evidence.mrr_90d_ago, LONG_WINDOW_DAYS, health)
        )
    earlier = health.failed_payments_90d - health.failed_payments_30d
    if earlier > 0:
        found.append(
            Signal(
                "earlier_payment_failures",
                WEIGHTS["earlier_payment_failures"],
                f"{earlier} failed charge{'s' if earlier != 1 else ''} "
                f"{policy.failed_payments_window_days + 1}-{LONG_WINDOW_DAYS} days ago",
            )
        )
    if health.flag_payment_failures:
        found.append(
            Signal(
                "flag_payment_failures",
                WEIGHTS["flag_payment_failures"],
                f"{health.failed_payments_30d} failed payments in the last "
                f"{policy.failed_payments_window_days} days",
            )
        )
    if health.flag_invoice_aging:
        late = sum(1 for _, days in evidence.facts.aged_days if days >= policy.invoice_aging_flag_days)
        found.append(
            Signal(
                "flag_invoice_aging",
                WEIGHTS["flag_invoice_aging"],
                f"{late} open invoice(s) past due, oldest {health.max_days_past_due} days, "
                f"{_amounts(health.past_due_by_currency)} outstanding",
            )
        )
    return sorted(found, key=lambda signal: -signal.weight)
