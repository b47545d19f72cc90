"""MRR movements, plan changes and MRR 30 days ago (contract sections 2, 6 and 7)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from destination_perly.health import TierRule
from destination_perly.health.model import CustomerEvaluation, MrrSnapshot
from destination_perly.health.values import to_time
from unit_tests.health.builders import (
    AS_OF,
    BASIC,
    PRO,
    PRODUCTS,
    bundle,
    days_ago,
    evaluate,
    event,
    invoice,
    item,
    paid_invoice,
    price,
    subscription,
)

PRO_YEARLY = price("price_pro_y", amount=30000, interval="year", product="prod_pro")


def kinds(evaluation: CustomerEvaluation) -> list[tuple[str, str | None, int, int]]:
    return [(m.kind, m.churn_type, m.mrr_before, m.mrr_after) for m in evaluation.movements]


def plan_kinds(evaluation: CustomerEvaluation) -> list[tuple[str, str | None, str | None]]:
    return [(c.kind, c.from_plan, c.to_plan) for c in evaluation.plan_changes]


def changed(
    sub: dict[str, Any], at_days: float, previous: dict[str, Any], event_id: str = "evt_1"
) -> dict[str, Any]:
    return event(event_id, days_ago(at_days), sub, previous=previous)


def test_given_plain_active_subscription_when_building_history_then_one_new_movement_at_start() -> None:
    # started 400 days ago at 1000 -> new 0 -> 1000 then nothing; 30 days ago also 1000
    evaluation = evaluate(bundle([subscription(item(BASIC))], products=PRODUCTS))
    assert kinds(evaluation) == [("new", None, 0, 1000)]
    assert evaluation.movements[0].at == to_time(days_ago(400))
    assert (evaluation.health.mrr_30d_ago, evaluation.health.mrr_change_30d) == (1000, 0)


def test_given_upgrade_event_10_days_ago_when_building_history_then_expansion_and_upgrade() -> None:
    # items were Basic 1000, now Pro 3000 -> expansion +2000; 30 days ago 1000
    now = subscription(item(PRO))
    before_items = {"data": [item(BASIC)]}
    evaluation = evaluate(
        bundle([now], events=[changed(now, 10, {"items": before_items})], products=PRODUCTS)
    )
    assert kinds(evaluation) == [("new", None, 0, 1000), ("expansion", None, 1000, 3000)]
    assert evaluation.movements[1].cause == "evt_1"
    assert plan_kinds(evaluation) == [("upgrade", "price_basic", "price_pro")]
    health = evaluation.health
    assert (health.mrr_30d_ago, health.mrr_change_30d, health.flag_downgrade) == (1000, 2000, False)


def test_given_downgrade_event_when_building_history_then_contraction_downgrade_and_both_flags() -> None:
    # Pro 3000 -> Basic 1000, 10 days ago: contraction -2000, downgrade, MRR below 30 days ago
    now = subscription(item(BASIC))
    evaluation = evaluate(
        bundle([now], events=[changed(now, 10, {"items": {"data": [item(PRO)]}})], products=PRODUCTS)
    )
    assert kinds(evaluation)[-1] == ("contraction", None, 3000, 1000)
    assert plan_kinds(evaluation) == [("downgrade", "price_pro", "price_basic")]
    health = evaluation.health
    assert (health.flag_downgrade, health.flag_mrr_contraction, health.mrr_30d_ago) == (True, True, 3000)
    assert any("Downgraded from Pro to Basic" in reason for reason in health.risk_reasons)


DOWNGRADE_WINDOW = [
    pytest.param(89, True, id="89-days-ago-flagged"),
    pytest.param(91, False, id="91-days-ago-not-flagged"),
]


@pytest.mark.parametrize(("days", "expected"), DOWNGRADE_WINDOW)
def test_given_downgrade_some_days_ago_when_flagging_then_only_last_90_days_count(
    days: int, expected: bool
) -> None:
    now = subscription(item(BASIC))
    found = bundle([now], events=[changed(now, days, {"items": {"data": [item(PRO)]}})], products=PRODUCTS)
    assert evaluate(found).health.flag_downgrade is expected


def test_given_fewer_seats_when_building_history_then_contraction_but_no_downgrade() -> None:
    # 5 seats x 1000 -> 3 seats: 5000 -> 3000 contraction; same plan: no plan change
    now = subscription(item(BASIC, 3))
    evaluation = evaluate(bundle([now], events=[changed(now, 5, {"items": {"data": [item(BASIC, 5)]}})]))
    assert kinds(evaluation)[-1] == ("contraction", None, 5000, 3000)
    assert evaluation.plan_changes == []
    assert evaluation.health.flag_downgrade is False


def test_given_same_plan_on_yearly_interval_when_building_history_then_no_downgrade() -> None:
    # Pro monthly 3000 -> Pro yearly 30000 (2500/month): contraction 500, but the same plan: no downgrade
    now = subscription(item(PRO_YEARLY))
    evaluation = evaluate(
        bundle([now], events=[changed(now, 5, {"items": {"data": [item(PRO)]}})], products=PRODUCTS)
    )
    assert kinds(evaluation)[-1] == ("contraction", None, 3000, 2500)
    assert evaluation.plan_changes == []


def test_given_tier_map_when_ranks_disagree_with_price_then_map_rank_decides() -> None:
    # map: Basic rank 5, Pro rank 1 -> moving Basic -> Pro is a downgrade even though it costs more
    tiers = (TierRule("price_basic", "Gold", 5), TierRule("prod_pro", "Bronze", 1))
    now = subscription(item(PRO))
    found = bundle([now], events=[changed(now, 5, {"items": {"data": [item(BASIC)]}})], products=PRODUCTS)
    evaluation = evaluate(found, tiers=tiers)
    assert [(c.kind, c.from_tier, c.to_tier) for c in evaluation.plan_changes] == [
        ("downgrade", "Gold", "Bronze")
    ]
    assert evaluation.health.plan_tier == "Bronze"


CHURN = [
    # customer asked to cancel -> voluntary
    pytest.param({"cancellation_details": {"reason": "cancellation_requested"}}, "voluntary", id="voluntary"),
    pytest.param({"cancellation_details": {"reason": "payment_failed"}}, "involuntary", id="payment-failed"),
    pytest.param(
        {"cancellation_details": {"reason": "payment_disputed"}}, "involuntary", id="payment-disputed"
    ),
    pytest.param({"cancellation_details": {"reason": None}}, "unknown", id="no-reason"),
]


@pytest.mark.parametrize(("fields", "churn_type"), CHURN)
def test_given_canceled_subscription_when_building_history_then_churn_type_follows_the_reason(
    fields: dict[str, Any], churn_type: str
) -> None:
    sub = subscription(status="canceled", ended_at=days_ago(20), canceled_at=days_ago(20), **fields)
    evaluation = evaluate(bundle([sub]))
    assert kinds(evaluation) == [("new", None, 0, 1000), ("churn", churn_type, 1000, 0)]
    assert evaluation.movements[1].at == to_time(days_ago(20))
    assert plan_kinds(evaluation) == [("cancellation", "price_basic", None)]
    assert (evaluation.health.mrr, evaluation.health.mrr_30d_ago, evaluation.health.flag_mrr_contraction) == (
        0,
        1000,
        True,
    )


def test_given_subscription_became_unpaid_by_event_when_building_history_then_involuntary_churn() -> None:
    now = subscription(status="unpaid")
    evaluation = evaluate(bundle([now], events=[changed(now, 3, {"status": "past_due"})]))
    assert kinds(evaluation)[-1] == ("churn", "involuntary", 1000, 0)
    assert evaluation.movements[-1].at == to_time(days_ago(3))


def test_given_past_due_beyond_30_days_when_building_history_then_delinquent_churn_is_involuntary() -> None:
    # invoice due 40 days ago: delinquent from day 31 -> churn 9 days ago
    sub = subscription(status="past_due")
    evaluation = evaluate(bundle([sub], [invoice(due_date=days_ago(40), finalized_at=days_ago(45))]))
    assert kinds(evaluation)[-1] == ("churn", "involuntary", 1000, 0)
    assert evaluation.movements[-1].at == to_time(days_ago(40)) + timedelta(days=31)


def test_given_past_due_back_to_active_when_building_history_then_no_movement() -> None:
    now = subscription(status="active")
    evaluation = evaluate(bundle([now], events=[changed(now, 3, {"status": "past_due"})]))
    assert kinds(evaluation) == [("new", None, 0, 1000)]


def test_given_trial_converted_when_building_history_then_conversion_is_new_and_trial_start_is_not() -> None:
    sub = subscription(start=days_ago(40), trial_start=days_ago(40), trial_end=days_ago(26))
    evaluation = evaluate(bundle([sub]))
    assert kinds(evaluation) == [("new", None, 0, 1000)]
    assert evaluation.movements[0].at == to_time(days_ago(26))
    assert plan_kinds(evaluation) == [("trial_conversion", "price_basic", "price_basic")]
    assert evaluation.health.trial_converted_at == to_time(days_ago(26))
    # 30 days ago it was still trialing: MRR 0 then
    assert evaluation.health.mrr_30d_ago == 0


def test_given_trial_in_progress_when_building_history_then_no_movement() -> None:
    sub = subscription(status="trialing", start=days_ago(5), trial_start=days_ago(5), trial_end=days_ago(-9))
    evaluation = evaluate(bundle([sub]))
    assert (evaluation.movements, evaluation.plan_changes) == ([], [])


def test_given_new_subscription_after_churn_when_building_history_then_reactivation() -> None:
    old = subscription(
        sub_id="sub_old",
        status="canceled",
        ended_at=days_ago(100),
        start=days_ago(300),
        cancellation_details={"reason": "cancellation_requested"},
    )
    new = subscription(item(PRO), sub_id="sub_new", start=days_ago(20))
    evaluation = evaluate(bundle([old, new], products=PRODUCTS))
    assert kinds(evaluation) == [
        ("new", None, 0, 1000),
        ("churn", "voluntary", 1000, 0),
        ("reactivation", None, 0, 3000),
    ]
    assert ("reactivation", None, "price_pro") in plan_kinds(evaluation)


def test_given_swap_within_an_hour_when_building_history_then_one_grouped_movement() -> None:
    # Basic canceled and Pro started 20 minutes apart: one expansion 1000 -> 3000, not churn + reactivation
    old = subscription(sub_id="sub_old", status="canceled", ended_at=days_ago(10), start=days_ago(300))
    new = subscription(item(PRO), sub_id="sub_new", start=days_ago(10) + 1200)
    evaluation = evaluate(bundle([old, new], products=PRODUCTS))
    assert kinds(evaluation) == [("new", None, 0, 1000), ("expansion", None, 1000, 3000)]


def test_given_swap_two_hours_apart_when_building_history_then_churn_then_reactivation() -> None:
    old = subscription(sub_id="sub_old", status="canceled", ended_at=days_ago(10), start=days_ago(300))
    new = subscription(item(PRO), sub_id="sub_new", start=days_ago(10) + 7200)
    evaluation = evaluate(bundle([old, new], products=PRODUCTS))
    assert [kind for kind, *_ in kinds(evaluation)] == ["new", "churn", "reactivation"]


def test_given_past_invoices_show_a_bigger_plan_when_first_sync_then_the_earlier_shrink_is_seen() -> None:
    # paid monthly Pro (3000) invoices until 60 days ago, then Basic (1000): contraction at that period start
    month = 30 * 86400
    start = days_ago(150)
    invoices = [
        paid_invoice(f"in_{index}", start + index * month, start + (index + 1) * month, "price_pro", 3000)
        for index in range(3)
    ] + [
        paid_invoice(f"in_{index}", start + index * month, start + (index + 1) * month, "price_basic", 1000)
        for index in range(3, 5)
    ]
    sub = subscription(item(BASIC), start=start)
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC, PRO], products=PRODUCTS))
    assert kinds(evaluation) == [("new", None, 0, 3000), ("contraction", None, 3000, 1000)]
    assert evaluation.movements[1].at == to_time(start + 3 * month)
    assert evaluation.movements[1].cause == "in_3"  # the first invoice billed at the new price
    assert plan_kinds(evaluation) == [("downgrade", "price_pro", "price_basic")]


def test_given_invoices_with_same_plan_when_first_sync_then_no_spurious_movement() -> None:
    month = 30 * 86400
    start = days_ago(150)
    invoices = [
        paid_invoice(f"in_{index}", start + index * month, start + (index + 1) * month, "price_basic", 1000)
        for index in range(5)
    ]
    evaluation = evaluate(bundle([subscription(item(BASIC), start=start)], invoices, prices=[BASIC]))
    assert kinds(evaluation) == [("new", None, 0, 1000)]


def test_given_snapshot_40_days_ago_higher_when_no_events_then_contraction_dated_now() -> None:
    # observed 5000 forty days ago, 1000 now: MRR 30 days ago is 5000; contraction flagged
    snapshots = [MrrSnapshot(AS_OF - timedelta(days=40), {"usd": 5000}, "sync_1")]
    evaluation = evaluate(bundle([subscription(item(BASIC))], snapshots=snapshots))
    health = evaluation.health
    assert (health.mrr_30d_ago, health.mrr_change_30d, health.flag_mrr_contraction) == (5000, -4000, True)
    assert kinds(evaluation)[-1] == ("contraction", None, 5000, 1000)
    assert evaluation.movements[-1].at == AS_OF


def test_given_snapshots_and_an_event_between_when_building_history_then_movement_dated_by_the_event() -> (
    None
):
    snapshots = [
        MrrSnapshot(AS_OF - timedelta(days=20), {"usd": 3000}, "sync_1"),
        MrrSnapshot(AS_OF - timedelta(days=2), {"usd": 1000}, "sync_2"),
    ]
    now = subscription(item(BASIC))
    found = bundle([now], events=[changed(now, 10, {"items": {"data": [item(PRO)]}})], snapshots=snapshots)
    evaluation = evaluate(found)
    assert kinds(evaluation)[-1] == ("contraction", None, 3000, 1000)
    assert evaluation.movements[-1].at == to_time(days_ago(10))


def test_given_events_out_of_order_when_evaluating_twice_then_output_is_identical() -> None:
    now = subscription(item(PRO))
    events = [
        changed(now, 10, {"items": {"data": [item(BASIC)]}}, "evt_a"),
        changed(now, 5, {"quantity": 1}, "evt_b"),
    ]
    first = evaluate(bundle([now], events=events))
    second = evaluate(bundle([now], events=list(reversed(events))))
    assert first == second


def test_given_event_after_as_of_when_building_history_then_it_is_ignored() -> None:
    now = subscription(item(PRO))
    evaluation = evaluate(bundle([now], events=[changed(now, -1, {"items": {"data": [item(BASIC)]}})]))
    assert kinds(evaluation) == [("new", None, 0, 3000)]


def test_given_subscription_created_event_when_building_history_then_nothing_before_it() -> None:
    now = subscription(item(PRO), start=days_ago(400))
    created = event("evt_c", days_ago(8), now, event_type="customer.subscription.created")
    evaluation = evaluate(bundle([now], events=[created]))
    assert kinds(evaluation) == [("new", None, 0, 3000)]
    assert evaluation.movements[0].at == to_time(days_ago(8))


def test_given_two_currencies_when_one_churns_then_movements_are_per_currency() -> None:
    eur = price("price_eur", amount=2000, currency="eur")
    usd_sub = subscription(item(BASIC), sub_id="sub_usd")
    eur_sub = subscription(item(eur), sub_id="sub_eur", status="canceled", ended_at=days_ago(5))
    evaluation = evaluate(bundle([usd_sub, eur_sub]))
    churn = [m for m in evaluation.movements if m.kind == "churn"]
    assert [(m.currency, m.mrr_before, m.mrr_after) for m in churn] == [("eur", 2000, 0)]
    # the usd MRR did not change: no contraction in the main currency
    assert evaluation.health.flag_mrr_contraction is False


def test_given_forever_discount_that_ended_10_days_ago_when_building_history_then_expansion_at_its_end() -> (
    None
):
    # 2000 with 50% forever until 10 days ago -> 1000, then 2000: expansion dated at the discount's end
    from unit_tests.health.builders import coupon, discount

    sub = subscription(
        item(price(amount=2000)), discounts=[discount("co_half", start=days_ago(400), end=days_ago(10))]
    )
    evaluation = evaluate(bundle([sub], coupons=[coupon("co_half", percent_off=50)]))
    assert kinds(evaluation) == [("new", None, 0, 1000), ("expansion", None, 1000, 2000)]
    assert evaluation.movements[1].at == to_time(days_ago(10))
    assert evaluation.health.mrr_30d_ago == 1000


def test_given_delinquent_customer_who_paid_when_building_history_then_churn_then_reactivation() -> None:
    # invoice due 50 days ago, paid 5 days ago; subscription active again now:
    # delinquent from day 31 (19 days ago) -> churn; back when paid -> reactivation
    paid = invoice(status="paid", amount_remaining=0, due_date=days_ago(50), finalized_at=days_ago(55))
    paid["status_transitions"]["paid_at"] = days_ago(5)
    now = subscription(status="active")
    found = bundle([now], [paid], events=[changed(now, 5, {"status": "past_due"})])
    evaluation = evaluate(found)
    assert [(kind, churn) for kind, churn, *_ in kinds(evaluation)] == [
        ("new", None),
        ("churn", "involuntary"),
        ("reactivation", None),
    ]
    assert evaluation.movements[1].at == to_time(days_ago(50)) + timedelta(days=31)


def test_given_problems_in_input_when_evaluating_then_they_are_reported_not_fatal() -> None:
    broken = {
        "id": "si_bad",
        "price": {"id": "p_bad", "recurring": {"interval": "fortnight"}, "unit_amount": 5},
    }
    sub = subscription(item(BASIC), broken, discounts=["di_unknown"])
    evaluation = evaluate(bundle([sub]))
    assert evaluation.health.mrr == 1000
    assert any("si_bad" in problem for problem in evaluation.problems)
    assert any("di_unknown" in problem for problem in evaluation.problems)


def test_given_invoices_for_an_unknown_price_when_first_sync_then_billed_amounts_give_the_mrr() -> None:
    # 3 monthly periods billed 5000 on a price we do not have, then the current 1000 plan:
    # contraction 5000 -> 1000
    month = 30 * 86400
    start = days_ago(150)
    invoices = [
        paid_invoice(f"in_{index}", start + index * month, start + (index + 1) * month, "price_gone", 5000)
        for index in range(3)
    ] + [paid_invoice("in_3", start + 3 * month, start + 4 * month, "price_basic", 1000)]
    evaluation = evaluate(bundle([subscription(item(BASIC), start=start)], invoices, prices=[BASIC]))
    assert kinds(evaluation) == [("new", None, 0, 5000), ("contraction", None, 5000, 1000)]


def test_given_trial_zero_invoice_when_first_sync_then_it_is_not_evidence_of_mrr() -> None:
    # the trial's 0 invoice covers the trial period: MRR stays 0 until the trial ends 20 days ago
    trial_invoice = paid_invoice("in_0", days_ago(34), days_ago(20), "price_basic", 0)
    first_paid = paid_invoice("in_1", days_ago(20), days_ago(-10), "price_basic", 1000)
    sub = subscription(item(BASIC), start=days_ago(34), trial_start=days_ago(34), trial_end=days_ago(20))
    evaluation = evaluate(bundle([sub], [trial_invoice, first_paid], prices=[BASIC]))
    assert kinds(evaluation) == [("new", None, 0, 1000)]
    assert evaluation.movements[0].at == to_time(days_ago(20))


def test_given_item_discount_and_inclusive_tax_when_first_sync_from_invoices_then_no_spurious_movement() -> (
    None
):
    # item: 1200 inclusive of 20% tax, item-level 50% forever discount -> 1200 x 0.5 / 1.2 = 500 all along
    from unit_tests.health.builders import coupon, discount, tax_rate

    taxed = price("price_basic", amount=1200, tax_behavior="inclusive")
    the_item = item(
        taxed, tax_rates=[tax_rate(20, True)], discounts=[discount("co_half", start=days_ago(400))]
    )
    month = 30 * 86400
    start = days_ago(150)
    invoices = [
        paid_invoice(f"in_{index}", start + index * month, start + (index + 1) * month, "price_basic", 600)
        for index in range(5)
    ]
    found = bundle(
        [subscription(the_item, start=start)], invoices, prices=[taxed], coupons=[coupon("co_half", 50)]
    )
    assert kinds(evaluate(found)) == [("new", None, 0, 500)]


BASIC_Y = price("price_basic_y", amount=12000, interval="year", product="prod_basic")
PRO_Y = price("price_pro_y36", amount=36000, interval="year", product="prod_pro")


def proration_invoice(
    at: int,
    end: int,
    removed: tuple[str, int],
    added: tuple[str, int],
    parent_type: str = "subscription_item_details",
) -> dict[str, Any]:
    from unit_tests.health.builders import line

    found = paid_invoice("in_prorate", at, end, removed[0], 0)
    found["lines"]["data"] = [
        line(at, end, removed[0], -5000, removed[1], proration=True, parent_type=parent_type),
        line(at, end, added[0], 7000, added[1], proration=True, parent_type=parent_type),
    ]
    return found


# Stripe bills a proration through a pending invoice item: its line names either parent.
@pytest.mark.parametrize("parent_type", ["subscription_item_details", "invoice_item_details"])
def test_given_mid_year_upgrade_only_in_proration_lines_when_first_sync_then_dated_at_the_change(
    parent_type: str,
) -> None:
    # yearly Basic 12000 (1000/month) from 300 days ago;
    # prorated to yearly Pro 36000 (3000/month) 100 days ago
    start, change, end = days_ago(300), days_ago(100), days_ago(-65)
    invoices = [
        paid_invoice("in_year", start, end, "price_basic_y", 12000),
        proration_invoice(change, end, ("price_basic_y", 1), ("price_pro_y36", 1), parent_type),
    ]
    sub = subscription(item(PRO_Y), start=start)
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC_Y, PRO_Y], products=PRODUCTS))
    assert kinds(evaluation) == [("new", None, 0, 1000), ("expansion", None, 1000, 3000)]
    assert evaluation.movements[1].at == to_time(change)
    assert plan_kinds(evaluation) == [("upgrade", "price_basic_y", "price_pro_y36")]


def test_given_seats_cut_mid_year_in_proration_lines_when_first_sync_then_contraction_not_downgrade() -> None:
    # 5 seats of yearly Basic (5000/month) cut to 3 (3000/month) 40 days ago
    start, change, end = days_ago(300), days_ago(40), days_ago(-65)
    invoices = [
        paid_invoice("in_year", start, end, "price_basic_y", 60000, quantity=5),
        proration_invoice(change, end, ("price_basic_y", 5), ("price_basic_y", 3)),
    ]
    sub = subscription(item(BASIC_Y, 3), start=start)
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC_Y], products=PRODUCTS))
    assert kinds(evaluation) == [("new", None, 0, 5000), ("contraction", None, 5000, 3000)]
    assert evaluation.movements[1].at == to_time(change)
    assert evaluation.plan_changes == []
    assert (evaluation.health.mrr_30d_ago, evaluation.health.flag_mrr_contraction) == (3000, False)


def test_given_unpaid_subscription_without_events_when_first_sync_then_churn_at_the_last_failed_retry() -> (
    None
):
    # paid period 70..40 days ago; open invoice finalized 40 days ago; retries failed 39 and 33 days ago:
    # counted (past_due) until the last failure, then unpaid -> involuntary churn 33 days ago
    from unit_tests.health.builders import charge

    paid = paid_invoice("in_1", days_ago(70), days_ago(40), "price_basic", 1000)
    unpaid_invoice = paid_invoice("in_2", days_ago(40), days_ago(10), "price_basic", 1000)
    unpaid_invoice.update(status="open", amount_remaining=1000)
    unpaid_invoice["status_transitions"].update(paid_at=None, finalized_at=days_ago(40))
    sub = subscription(item(BASIC), status="unpaid", start=days_ago(70))
    failures = [charge("ch_1", days=39), charge("ch_2", days=33)]
    evaluation = evaluate(bundle([sub], [paid, unpaid_invoice], failures, prices=[BASIC]))
    assert kinds(evaluation) == [("new", None, 0, 1000), ("churn", "involuntary", 1000, 0)]
    assert evaluation.movements[1].at == to_time(days_ago(33))


def test_given_usage_billed_in_arrears_when_reading_invoice_periods_then_the_metered_line_is_ignored() -> (
    None
):
    # each invoice bills this month's licensed seat and last month's metered usage; the period is this month's
    from unit_tests.health.builders import line

    metered = price("price_calls", amount=2, recurring={"interval": "month", "usage_type": "metered"})
    month = 30 * 86400
    start = days_ago(120)
    invoices = []
    for index in range(4):
        found = paid_invoice(
            f"in_{index}", start + index * month, start + (index + 1) * month, "price_basic", 1000
        )
        if index:
            found["lines"]["data"].append(
                line(start + (index - 1) * month, start + index * month, "price_calls", 700)
            )
        invoices.append(found)
    sub = subscription(item(BASIC), item(metered, None), start=start)
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC, metered]))
    assert kinds(evaluation) == [("new", None, 0, 1000)]
