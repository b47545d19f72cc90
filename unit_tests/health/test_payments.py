"""Invoice aging, failed payments, hard declines and the payment_risk ladder (contract section 4)."""

from __future__ import annotations

from typing import Any

import pytest

from destination_perly.health.payments import aging_bucket
from unit_tests.health.builders import bundle, charge, days_ago, evaluate, invoice, subscription


def risk(invoices: list[dict[str, Any]] | None = None, charges: list[dict[str, Any]] | None = None) -> str:
    return evaluate(bundle([subscription()], invoices, charges)).health.payment_risk


DAYS_PAST_DUE = [
    # due 10 days ago -> 10
    pytest.param(dict(due_date=days_ago(10), finalized_at=days_ago(40)), 10, id="due-date-wins"),
    # no due_date: finalized 12 days ago -> 12
    pytest.param(dict(due_date=None, finalized_at=days_ago(12)), 12, id="finalized-at-fallback"),
    # due 10.9 days ago -> whole days: 10
    pytest.param(dict(due_date=days_ago(10.9)), 10, id="whole-days-rounded-down"),
    # due in 5 days -> not past due: 0
    pytest.param(dict(due_date=days_ago(-5)), 0, id="not-yet-due"),
]


@pytest.mark.parametrize(("fields", "expected"), DAYS_PAST_DUE)
def test_given_open_invoice_when_aging_then_days_count_from_due_date_else_finalized_at(
    fields: dict[str, Any], expected: int
) -> None:
    health = evaluate(bundle([subscription()], [invoice(**fields)])).health
    assert health.max_days_past_due == expected


NEVER_AGED = [
    pytest.param(dict(status="draft"), id="draft"),
    pytest.param(dict(status="paid", amount_remaining=0), id="paid"),
    pytest.param(dict(status="void"), id="void"),
    pytest.param(dict(status="open", amount_remaining=0), id="open-nothing-left"),
]


@pytest.mark.parametrize("fields", NEVER_AGED)
def test_given_invoice_not_open_with_money_left_when_aging_then_it_is_never_aged(
    fields: dict[str, Any],
) -> None:
    health = evaluate(bundle([subscription()], [invoice(due_date=days_ago(70), **fields)])).health
    assert (health.max_days_past_due, health.flag_invoice_aging, health.past_due_amount) == (0, False, 0)


@pytest.mark.parametrize(
    ("days", "bucket"),
    [
        pytest.param(-3, "current", id="future"),
        pytest.param(0, "current", id="zero"),
        pytest.param(1, "1-30", id="1"),
        pytest.param(30, "1-30", id="30"),
        pytest.param(31, "31-60", id="31"),
        pytest.param(60, "31-60", id="60"),
        pytest.param(61, "61-90", id="61"),
        pytest.param(90, "61-90", id="90"),
        pytest.param(91, "90+", id="91"),
    ],
)
def test_given_days_past_due_when_bucketing_then_contract_buckets_apply(days: int, bucket: str) -> None:
    assert aging_bucket(days) == bucket


HARD_DECLINES = [
    pytest.param(dict(advice_code="do_not_try_again"), "high", id="advice-do-not-try-again"),
    pytest.param(dict(reason="lost_card"), "high", id="lost-card"),
    pytest.param(dict(reason="stolen_card"), "high", id="stolen-card"),
    pytest.param(dict(reason="pickup_card"), "high", id="pickup-card"),
    pytest.param(dict(reason="expired_card"), "high", id="expired-card"),
    pytest.param(dict(reason="incorrect_number"), "high", id="incorrect-number"),
    pytest.param(dict(reason="invalid_account"), "high", id="invalid-account"),
    # a soft decline is one failed charge: low
    pytest.param(dict(reason="insufficient_funds", advice_code="try_again_later"), "low", id="soft-decline"),
    # a hard decline older than 30 days no longer counts
    pytest.param(dict(reason="stolen_card", days=31), "none", id="hard-decline-31-days-ago"),
]


@pytest.mark.parametrize(("fields", "expected"), HARD_DECLINES)
def test_given_one_failed_charge_when_rating_payment_risk_then_hard_declines_are_high(
    fields: dict[str, Any], expected: str
) -> None:
    assert risk(charges=[charge(**fields)]) == expected


def charges(count: int, days: float = 1) -> list[dict[str, Any]]:
    return [charge(f"ch_{index}", days=days) for index in range(count)]


def uncollectible(days: float) -> dict[str, Any]:
    found = invoice(status="uncollectible", amount_remaining=1000)
    found["status_transitions"]["marked_uncollectible_at"] = days_ago(days)
    return found


LADDER = [
    pytest.param([], [], "none", id="nothing"),
    # open invoice not yet due -> low
    pytest.param([invoice(due_date=days_ago(-3))], [], "low", id="not-yet-due-low"),
    pytest.param([], charges(1), "low", id="one-failure-low"),
    pytest.param([], charges(2), "medium", id="two-failures-medium"),
    pytest.param([invoice(due_date=days_ago(1))], [], "medium", id="1-day-past-due-medium"),
    pytest.param([invoice(due_date=days_ago(30))], [], "medium", id="30-days-past-due-medium"),
    pytest.param([invoice(due_date=days_ago(31))], [], "high", id="31-days-past-due-high"),
    pytest.param([invoice(due_date=days_ago(60))], [], "high", id="60-days-past-due-high"),
    pytest.param([invoice(due_date=days_ago(61))], [], "critical", id="61-days-past-due-critical"),
    pytest.param([], charges(3), "high", id="three-failures-high"),
    # failures older than 30 days do not count
    pytest.param([], charges(3, days=31), "none", id="old-failures-none"),
    # uncaptured but succeeded authorisation is not a failure
    pytest.param([], [charge(status="succeeded", captured=False)], "none", id="uncaptured-not-failure"),
    pytest.param([], [charge(status="succeeded", captured=True)], "none", id="success-none"),
    # retries exhausted: open auto-charged invoice with no next attempt -> high
    pytest.param(
        [invoice(due_date=days_ago(-3), next_payment_attempt=None)], [], "high", id="retries-exhausted"
    ),
    # a send_invoice invoice has no payment attempts by design: not exhausted -> low (not yet due)
    pytest.param(
        [invoice(due_date=days_ago(-3), next_payment_attempt=None, collection_method="send_invoice")],
        [],
        "low",
        id="send-invoice-not-exhausted",
    ),
    pytest.param([uncollectible(89)], [], "critical", id="uncollectible-89-days-critical"),
    pytest.param([uncollectible(91)], [], "none", id="uncollectible-91-days-none"),
    # the worst level wins: 2 failures (medium) and 61 days past due (critical)
    pytest.param([invoice(due_date=days_ago(61))], charges(2), "critical", id="worst-wins"),
]


@pytest.mark.parametrize(("invoices", "the_charges", "expected"), LADDER)
def test_given_invoices_and_charges_when_rating_payment_risk_then_the_ladder_applies(
    invoices: list[dict[str, Any]], the_charges: list[dict[str, Any]], expected: str
) -> None:
    assert risk(invoices, the_charges) == expected


def test_given_failures_at_different_ages_when_counting_then_30_and_90_day_windows_are_separate() -> None:
    # 2 failures 5 days ago, 1 at 45 days, 1 at 100 days -> 30d: 2, 90d: 3
    found = [
        charge("ch_a", days=5),
        charge("ch_b", days=5),
        charge("ch_c", days=45),
        charge("ch_d", days=100),
    ]
    health = evaluate(bundle([subscription()], charges=found)).health
    assert (health.failed_payments_30d, health.failed_payments_90d) == (2, 3)


def test_given_two_open_invoices_past_due_when_summing_then_past_due_amount_adds_only_late_ones() -> None:
    # 1500 (10 days late) + 2500 (40 days late) = 4000; 700 not yet due is not past due
    invoices = [
        invoice("in_a", amount_remaining=1500, due_date=days_ago(10)),
        invoice("in_b", amount_remaining=2500, due_date=days_ago(40)),
        invoice("in_c", amount_remaining=700, due_date=days_ago(-4)),
    ]
    health = evaluate(bundle([subscription()], invoices)).health
    assert (health.past_due_amount, health.max_days_past_due) == (4000, 40)
