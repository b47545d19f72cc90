"""subscription_health precedence, the five flags, risk score, tenure, customer fields (sections 2, 4, 6)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from destination_perly.health import RiskPolicy
from destination_perly.health.score import WEIGHTS
from unit_tests.health.builders import (
    AS_OF,
    bundle,
    charge,
    customer,
    days_ago,
    evaluate,
    invoice,
    subscription,
)


def health_of(subs: list[dict[str, Any]], **kwargs: Any) -> str:
    return evaluate(bundle(subs, **kwargs)).health.subscription_health


ENDED = {"status": "canceled", "ended_at": days_ago(10), "canceled_at": days_ago(10)}
SUBSCRIPTION_HEALTH = [
    pytest.param([], "none", id="no-subscriptions-none"),
    pytest.param([subscription()], "healthy", id="active-healthy"),
    pytest.param([subscription(status="trialing", trial_end=days_ago(-10))], "trialing", id="trial-only"),
    pytest.param([subscription(status="past_due")], "at_risk", id="past-due-at-risk"),
    pytest.param([subscription(status="unpaid")], "at_risk", id="unpaid-at-risk"),
    pytest.param([subscription(status="incomplete")], "at_risk", id="incomplete-at-risk"),
    pytest.param(
        [subscription(pause_collection={"behavior": "void"})], "at_risk", id="paused-collection-at-risk"
    ),
    pytest.param([subscription(cancel_at_period_end=True)], "at_risk", id="set-to-cancel-at-risk"),
    pytest.param([subscription(cancel_at=days_ago(-20))], "at_risk", id="cancel-at-future-at-risk"),
    # worst wins: one healthy, one past_due -> at_risk
    pytest.param(
        [subscription(sub_id="sub_a"), subscription(sub_id="sub_b", status="past_due")],
        "at_risk",
        id="worst-wins",
    ),
    # healthy beats trialing
    pytest.param(
        [
            subscription(sub_id="sub_a"),
            subscription(sub_id="sub_b", status="trialing", trial_end=days_ago(-3)),
        ],
        "healthy",
        id="healthy-over-trialing",
    ),
    # an ended past_due subscription does not make the customer at risk
    pytest.param(
        [subscription(sub_id="sub_a"), subscription(sub_id="sub_b", status="past_due", ended_at=days_ago(1))],
        "healthy",
        id="ended-ignored",
    ),
    # a canceled subscription that had counted -> churned
    pytest.param([subscription(**ENDED)], "churned", id="canceled-churned"),
    # canceled during its trial: never counted -> none
    pytest.param(
        [subscription(trial_start=days_ago(20), trial_end=days_ago(5), start=days_ago(20), **ENDED)],
        "none",
        id="canceled-in-trial-none",
    ),
    # incomplete_expired never counted -> none
    pytest.param(
        [subscription(status="incomplete_expired", ended_at=days_ago(3))], "none", id="incomplete-expired"
    ),
]


@pytest.mark.parametrize(("subs", "expected"), SUBSCRIPTION_HEALTH)
def test_given_subscriptions_when_rating_health_then_precedence_follows_the_contract(
    subs: list[dict[str, Any]], expected: str
) -> None:
    assert health_of(subs) == expected


def test_given_only_a_canceled_sub_with_paid_history_when_rating_then_churned_and_zero_mrr() -> None:
    health = evaluate(bundle([subscription(**ENDED)])).health
    assert (health.subscription_health, health.mrr, health.plan_id) == ("churned", 0, None)


FAILURE_FLAG = [
    # 1 failure in 30 days: below 2 -> no flag
    pytest.param([charge("ch_a", days=2)], False, id="one-failure"),
    # 2 failures in 30 days: flag
    pytest.param([charge("ch_a", days=2), charge("ch_b", days=29)], True, id="two-failures"),
    # second failure 31 days ago: outside the window -> no flag
    pytest.param([charge("ch_a", days=2), charge("ch_b", days=31)], False, id="second-outside-window"),
]


@pytest.mark.parametrize(("the_charges", "expected"), FAILURE_FLAG)
def test_given_failed_charges_when_flagging_then_two_in_30_days_raise_payment_failures(
    the_charges: list[dict[str, Any]], expected: bool
) -> None:
    health = evaluate(bundle([subscription()], charges=the_charges)).health
    assert health.flag_payment_failures is expected


AGING_FLAG = [
    pytest.param(days_ago(-1), False, id="not-due"),
    pytest.param(days_ago(0.5), False, id="0-days"),
    pytest.param(days_ago(1), True, id="1-day"),
]


@pytest.mark.parametrize(("due", "expected"), AGING_FLAG)
def test_given_open_invoice_when_flagging_then_one_day_past_due_raises_invoice_aging(
    due: int, expected: bool
) -> None:
    health = evaluate(bundle([subscription()], [invoice(due_date=due)])).health
    assert health.flag_invoice_aging is expected


def trial(end_in_days: float, **extra: Any) -> dict[str, Any]:
    return subscription(
        status="trialing",
        trial_start=days_ago(10),
        trial_end=days_ago(-end_in_days),
        start=days_ago(10),
        **extra,
    )


TRIAL_FLAG = [
    pytest.param(trial(2), customer(), True, id="2-days-no-method"),
    pytest.param(trial(3), customer(), True, id="exactly-3-days"),
    pytest.param(trial(3.5), customer(), False, id="3.5-days"),
    pytest.param(trial(2, default_payment_method="pm_1"), customer(), False, id="subscription-method"),
    pytest.param(trial(2, default_source="card_1"), customer(), False, id="subscription-source"),
    pytest.param(
        trial(2), customer(invoice_settings={"default_payment_method": "pm_1"}), False, id="customer-method"
    ),
    pytest.param(trial(2), customer(default_source="card_1"), False, id="customer-source"),
]


@pytest.mark.parametrize(("sub", "the_customer", "expected"), TRIAL_FLAG)
def test_given_trial_when_flagging_then_trial_ending_within_3_days_without_payment_method_raises(
    sub: dict[str, Any], the_customer: dict[str, Any], expected: bool
) -> None:
    health = evaluate(bundle([sub], the_customer=the_customer)).health
    assert health.flag_trial_expiring is expected
    assert health.trial_end is not None
    assert health.trial_end.timestamp() == sub["trial_end"]
    assert health.subscription_health == "trialing"


def test_given_trial_expiry_window_of_5_days_when_trial_ends_in_4_then_flag_raised() -> None:
    health = evaluate(bundle([trial(4)]), policy=RiskPolicy(trial_expiring_days=5)).health
    assert health.flag_trial_expiring is True


def test_given_tenure_when_customer_created_400_5_days_ago_then_tenure_is_400() -> None:
    # created 400.5 days before as_of: whole days -> 400
    health = evaluate(bundle([], the_customer=customer(created=days_ago(400.5)))).health
    assert health.tenure_days == 400


def test_given_customer_created_today_when_tenure_then_zero() -> None:
    health = evaluate(bundle([], the_customer=customer(created=days_ago(0.2)))).health
    assert health.tenure_days == 0


def test_given_customer_fields_when_evaluating_then_they_are_copied() -> None:
    health = evaluate(bundle([subscription()])).health
    assert (health.customer_id, health.email, health.name, health.created_at) == (
        "cus_1",
        "ada@example.com",
        "Ada",
        AS_OF - timedelta(days=400),
    )
    assert health.as_of == AS_OF


def test_given_every_flag_raised_when_scoring_then_score_is_100_with_one_reason_per_flag() -> None:
    # failures (2 in 30 days), aging (invoice 40 days late), trial expiring, MRR down vs 30 days ago,
    # downgrade within 90 days: all five
    from destination_perly.health.model import MrrSnapshot

    subs = [
        subscription(status="active", sub_id="sub_1"),
        trial(1, sub_id="sub_t"),
    ]
    snapshots = [MrrSnapshot(AS_OF.replace(month=9), {"usd": 5000}, "evt_old")]
    health = evaluate(
        bundle(
            subs,
            [invoice(due_date=days_ago(40))],
            [charge("ch_a", days=1), charge("ch_b", days=2)],
            snapshots=snapshots,
        )
    ).health
    raised = {name for name in WEIGHTS if getattr(health, name)}
    assert raised == set(WEIGHTS) - {"flag_downgrade"}
    assert health.risk_score == sum(WEIGHTS.values()) - WEIGHTS["flag_downgrade"]
    assert len(health.risk_reasons) == 4
    assert "2 failed payments in the last 30 days" in health.risk_reasons
    assert any("40 days" in reason and "USD 10.00" in reason for reason in health.risk_reasons)
    assert any("USD 50.00" in reason and "USD 10.00" in reason for reason in health.risk_reasons)


def test_given_no_flags_when_scoring_then_score_is_zero_and_no_reasons() -> None:
    health = evaluate(bundle([subscription()])).health
    assert (health.risk_score, health.risk_reasons) == (0, [])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param({}, 0, id="none"),
        pytest.param({"flag_payment_failures": True}, 30, id="failures"),
        pytest.param({"flag_payment_failures": True, "flag_invoice_aging": True}, 55, id="failures-aging"),
        pytest.param({name: True for name in WEIGHTS}, 100, id="all"),
    ],
)
def test_given_raised_flags_when_scoring_then_weights_add_up(flags: dict[str, bool], expected: int) -> None:
    from destination_perly.health.score import risk_score

    assert risk_score(flags) == expected


def test_given_coupons_when_evaluating_then_active_coupon_ids_are_listed_sorted() -> None:
    from unit_tests.health.builders import coupon, discount

    sub = subscription(discounts=[discount("co_b"), discount("co_a", end=days_ago(1))])
    the_customer = customer(discount=discount("co_c"))
    coupons = [
        coupon("co_a", percent_off=5),
        coupon("co_b", percent_off=5, duration="once"),
        coupon("co_c", percent_off=5),
    ]
    health = evaluate(bundle([sub], coupons=coupons, the_customer=the_customer)).health
    # co_a ended; co_b (once) is active even though it does not change MRR; customer's co_c is active
    assert health.active_coupon_ids == ["co_b", "co_c"]


def test_given_deleted_customer_when_evaluating_then_row_is_marked_deleted() -> None:
    health = evaluate(bundle([], the_customer={"id": "cus_1", "object": "customer", "deleted": True})).health
    assert health.deleted is True


def deleted_event(at: int) -> dict[str, Any]:
    gone = {"id": "cus_1", "object": "customer", "deleted": True}
    return {
        "id": "evt_gone",
        "object": "event",
        "type": "customer.deleted",
        "created": at,
        "data": {"object": gone},
    }


def test_given_customer_deleted_before_first_sync_when_evaluating_then_row_is_marked_deleted() -> None:
    # Stripe no longer lists the customer, but its canceled subscription and the event still name it.
    never_listed = bundle(
        [subscription(status="canceled", ended_at=days_ago(20))], events=[deleted_event(days_ago(3))]
    )
    never_listed.customer = None

    assert evaluate(never_listed).health.deleted is True


@pytest.mark.parametrize(
    ("event_age_days", "expected"),
    [(2, True), (None, False)],
    ids=["deleted_after_last_read", "no_deletion_event"],
)
def test_given_stored_customer_when_a_deletion_event_is_newer_then_row_is_marked_deleted(
    event_age_days: int | None, expected: bool
) -> None:
    stored = {**customer(), "updated": days_ago(10)}
    events = [] if event_age_days is None else [deleted_event(days_ago(event_age_days))]

    assert evaluate(bundle([], events=events, the_customer=stored)).health.deleted is expected


def test_given_cancel_at_period_end_when_evaluating_then_flagged_and_still_counting() -> None:
    health = evaluate(bundle([subscription(cancel_at_period_end=True)])).health
    assert (health.cancel_at_period_end, health.mrr) == (True, 1000)


CONTRACTION_FLAG = [
    # MRR 30 days ago (observed 40 days ago and unchanged since) vs MRR now (1000)
    pytest.param(1001, True, id="now-1-below"),
    pytest.param(1000, False, id="equal"),
    pytest.param(999, False, id="now-1-above"),
]


@pytest.mark.parametrize(("earlier", "expected"), CONTRACTION_FLAG)
def test_given_mrr_30_days_ago_when_flagging_then_any_drop_raises_mrr_contraction(
    earlier: int, expected: bool
) -> None:
    from destination_perly.health.model import MrrSnapshot

    snapshots = [MrrSnapshot(AS_OF - timedelta(days=40), {"usd": earlier}, "sync_1")]
    health = evaluate(bundle([subscription()], snapshots=snapshots)).health
    assert (health.mrr_30d_ago, health.flag_mrr_contraction) == (earlier, expected)


POLICY = [
    # 2 failures do not reach a policy of 3
    pytest.param(
        RiskPolicy(failed_payments_flag_count=3), "flag_payment_failures", False, id="failures-policy-3"
    ),
    # an invoice 3 days late does not reach a policy of 5 days
    pytest.param(RiskPolicy(invoice_aging_flag_days=5), "flag_invoice_aging", False, id="aging-policy-5"),
    # a 10-day failed-payments window drops the failure from 20 days ago: 1 left, no flag
    pytest.param(RiskPolicy(failed_payments_window_days=10), "flag_payment_failures", False, id="window-10"),
    pytest.param(RiskPolicy(), "flag_payment_failures", True, id="default-failures"),
    pytest.param(RiskPolicy(), "flag_invoice_aging", True, id="default-aging"),
]


@pytest.mark.parametrize(("policy", "flag", "expected"), POLICY)
def test_given_policy_thresholds_when_flagging_then_the_policy_is_honoured(
    policy: RiskPolicy, flag: str, expected: bool
) -> None:
    found = bundle(
        [subscription()],
        [invoice(due_date=days_ago(3))],
        [charge("ch_a", days=2), charge("ch_b", days=20)],
    )
    assert getattr(evaluate(found, policy=policy).health, flag) is expected


def test_given_two_trials_ending_together_when_flagging_then_one_reason_with_hours_left() -> None:
    # both end in 2 days (48 hours); neither has a payment method
    trials = [trial(2, sub_id="sub_b"), trial(2, sub_id="sub_a")]
    health = evaluate(bundle(trials)).health
    assert health.flag_trial_expiring is True
    assert health.risk_reasons == [
        f"Trial of sub_a ends {(AS_OF + timedelta(days=2)).strftime('%Y-%m-%d %H:%M')} UTC (in 48 hours) "
        "with no payment method on file"
    ]
    assert health.risk_score == WEIGHTS["flag_trial_expiring"]
