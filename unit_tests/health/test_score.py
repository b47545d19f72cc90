"""The risk score (contract section 8): every billing signal scores, with its figures in the reasons."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from destination_perly.health.model import CustomerBundle, MrrSnapshot
from destination_perly.health.score import WEIGHTS, combine
from unit_tests.health.builders import (
    AS_OF,
    BASIC,
    PRO,
    PRODUCTS,
    bundle,
    charge,
    customer,
    days_ago,
    evaluate,
    event,
    invoice,
    item,
    subscription,
)

WITH_CARD = customer(invoice_settings={"default_payment_method": "pm_1"})


def downgraded() -> CustomerBundle:
    now = subscription(item(BASIC))
    moved = event("evt_1", days_ago(10), now, previous={"items": {"data": [item(PRO)]}})
    return bundle([now], events=[moved], products=PRODUCTS)


# (bundle, the signal's name, a piece of the reason that carries its figures)
SIGNALS = [
    pytest.param(
        bundle([subscription(cancel_at_period_end=True, canceled_at=days_ago(3))]),
        "scheduled_cancellation",
        "cancels on 2026-11-21 (cancel_at_period_end), requested on 2026-10-29",
        id="cancel-at-period-end",
    ),
    pytest.param(
        bundle([subscription(cancel_at=days_ago(-29))]),
        "scheduled_cancellation",
        "cancels on 2026-11-30 (cancel_at)",
        id="cancel-at",
    ),
    pytest.param(
        bundle([subscription()], charges=[charge(f"ch_{n}", days=n) for n in (1, 5, 9)]),
        "payment_risk_high",
        "payment risk high: 3 failed charges in 30 days, last: card_declined on 2026-10-31",
        id="payment-risk-high-failures",
    ),
    pytest.param(
        bundle([subscription()], charges=[charge(reason="expired_card")]),
        "payment_risk_high",
        "1 hard decline(s): expired_card",
        id="payment-risk-high-hard-decline",
    ),
    pytest.param(
        bundle([subscription()], [invoice(due_date=days_ago(75))]),
        "payment_risk_critical",
        "payment risk critical: invoice in_1 is 75 days past due",
        id="payment-risk-critical",
    ),
    pytest.param(
        bundle([subscription()], [invoice(due_date=days_ago(-5))]),
        "payment_risk_low",
        "payment risk low: 1 open invoice(s) not yet due",
        id="payment-risk-low",
    ),
    pytest.param(
        bundle([subscription(status="past_due")]),
        "subscription_past_due",
        "subscription sub_1 is past_due",
        id="past-due",
    ),
    pytest.param(
        bundle([subscription(status="unpaid")]),
        "subscription_unpaid",
        "subscription sub_1 is unpaid",
        id="unpaid",
    ),
    pytest.param(
        bundle([subscription(status="paused")]),
        "subscription_paused",
        "subscription sub_1 is paused",
        id="paused",
    ),
    pytest.param(
        bundle([subscription(pause_collection={"behavior": "void", "resumes_at": None})]),
        "collection_paused",
        "collection paused on sub_1 (void)",
        id="collection-paused",
    ),
    pytest.param(
        bundle([subscription(status="trialing", trial_start=days_ago(4), trial_end=days_ago(-10))]),
        "trial_without_payment_method",
        "Trial of sub_1 ends on 2026-11-11 (in 10 days) with no payment method on file",
        id="trial-no-payment-method",
    ),
    pytest.param(
        bundle([subscription(status="trialing", trial_start=days_ago(12), trial_end=days_ago(-2))]),
        "flag_trial_expiring",
        "(in 48 hours) with no payment method on file",
        id="flag-trial-expiring",
    ),
    pytest.param(
        downgraded(), "flag_downgrade", "Downgraded from Pro to Basic on 2026-10-22", id="flag-downgrade"
    ),
    pytest.param(
        downgraded(),
        "flag_mrr_contraction",
        "MRR fell from USD 30.00 to USD 10.00 in the last 30 days (-67%)",
        id="flag-mrr-contraction",
    ),
    pytest.param(
        bundle([subscription()], charges=[charge("ch_a", days=1), charge("ch_b", days=2)]),
        "flag_payment_failures",
        "2 failed payments in the last 30 days",
        id="flag-payment-failures",
    ),
    pytest.param(
        bundle([subscription()], charges=[charge("ch_a", days=40), charge("ch_b", days=75)]),
        "earlier_payment_failures",
        "2 failed charges 31-90 days ago",
        id="earlier-payment-failures",
    ),
    pytest.param(
        bundle(
            [subscription()],
            snapshots=[
                MrrSnapshot(AS_OF - timedelta(days=95), {"usd": 4000}, "evt_a"),
                MrrSnapshot(AS_OF - timedelta(days=40), {"usd": 1000}, "evt_b"),
            ],
        ),
        "mrr_trend_90d",
        "MRR fell from USD 40.00 to USD 10.00 in the last 90 days (-75%)",
        id="mrr-trend-90-days",
    ),
    pytest.param(
        bundle([subscription()], [invoice(due_date=days_ago(12))]),
        "flag_invoice_aging",
        "1 open invoice(s) past due, oldest 12 days, USD 10.00 outstanding",
        id="flag-invoice-aging",
    ),
]


@pytest.mark.parametrize(("found", "signal", "figures"), SIGNALS)
def test_given_one_billing_signal_when_scoring_then_score_is_positive_and_a_reason_quotes_its_figures(
    found: CustomerBundle, signal: str, figures: str
) -> None:
    health = evaluate(found).health
    assert health.subscription_health != "churned"
    assert health.risk_score >= round(100 * WEIGHTS[signal])
    assert any(figures in reason for reason in health.risk_reasons), health.risk_reasons


def test_given_no_signal_when_scoring_then_score_is_zero_and_no_reasons() -> None:
    health = evaluate(bundle([subscription()], the_customer=WITH_CARD)).health
    assert (health.risk_score, health.risk_reasons) == (0, [])


def test_given_a_trial_with_a_payment_method_when_scoring_then_nothing_is_at_risk() -> None:
    trial = subscription(status="trialing", trial_start=days_ago(12), trial_end=days_ago(-2))
    health = evaluate(bundle([trial], the_customer=WITH_CARD)).health
    assert (health.risk_score, health.risk_reasons) == (0, [])


def test_given_a_churned_customer_with_old_failures_when_scoring_then_no_score_and_no_reasons() -> None:
    ended = {"status": "canceled", "ended_at": days_ago(5), "canceled_at": days_ago(5)}
    the_bundle = bundle([subscription(**ended)], charges=[charge(f"ch_{n}", days=n) for n in (6, 7, 8)])
    health = evaluate(the_bundle).health
    assert health.subscription_health == "churned"
    assert (health.risk_score, health.risk_reasons) == (0, [])


def test_given_a_scheduled_cancellation_when_ranking_then_it_outranks_a_downgrade_and_a_late_invoice() -> (
    None
):
    cancelling = evaluate(bundle([subscription(cancel_at_period_end=True)])).health
    shrinking = evaluate(downgraded()).health
    late = evaluate(bundle([subscription()], [invoice(due_date=days_ago(12))])).health
    assert cancelling.risk_score > shrinking.risk_score > 0
    assert cancelling.risk_score > late.risk_score > 0


def test_given_more_signals_when_scoring_then_the_score_grows_and_stays_within_100() -> None:
    one = evaluate(bundle([subscription(status="past_due")])).health
    many: dict[str, Any] = {"status": "past_due", "cancel_at_period_end": True}
    failing = [charge(f"ch_{n}", days=n, reason="expired_card") for n in (1, 2, 3, 4)]
    all_of_them = evaluate(bundle([subscription(**many)], [invoice(due_date=days_ago(75))], failing)).health
    assert one.risk_score < all_of_them.risk_score <= 100
    assert len(all_of_them.risk_reasons) >= 5


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param([], 0, id="nothing"),
        pytest.param([0.7], 70, id="one"),
        pytest.param([0.5, 0.5], 75, id="two-halves"),
        pytest.param([0.001], 1, id="tiny-still-counts"),
        pytest.param([0.999, 0.999], 100, id="capped"),
    ],
)
def test_given_weights_when_combining_then_a_noisy_or_in_0_to_100(
    weights: list[float], expected: int
) -> None:
    assert combine(weights) == expected


def test_given_reasons_when_scoring_then_strongest_signal_comes_first() -> None:
    both = subscription(cancel_at=days_ago(-29), status="past_due")
    health = evaluate(bundle([both]), as_of=AS_OF + timedelta(hours=1)).health
    assert health.risk_reasons[0].startswith("cancels on 2026-11-30")


def test_given_an_old_and_a_recent_hard_decline_when_scoring_then_only_the_recent_one_is_quoted() -> None:
    charges = [
        charge("ch_old", days=60, reason="stolen_card"),
        charge("ch_new", days=2, reason="expired_card"),
    ]
    reasons = evaluate(bundle([subscription()], charges=charges)).health.risk_reasons
    assert any("1 hard decline(s): expired_card" in reason for reason in reasons), reasons
    assert not any("stolen_card" in reason for reason in reasons)
