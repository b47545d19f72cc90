"""The backtest: nothing after the as-of date changes a past score, and the figures are the usual ones."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from destination_perly.backtest import Churn, backtest, roc_auc, score_at
from destination_perly.health import HealthConfig
from destination_perly.health.model import CustomerBundle
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
    price,
    subscription,
)


def later(days: float) -> int:
    """A moment `days` after the as-of date."""
    return days_ago(-days)


def cancelled_later(with_event: bool) -> tuple[CustomerBundle, CustomerBundle]:
    before = subscription()
    after = {**before, "cancel_at_period_end": True, "cancel_at": later(20), "canceled_at": later(2)}
    previous = {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None}
    events = [event("evt_c", later(2), after, previous=previous)] if with_event else []
    return bundle([before]), bundle([after], events=events)


def ended_later() -> tuple[CustomerBundle, CustomerBundle]:
    before = subscription()
    after = {**before, "status": "canceled", "ended_at": later(5), "canceled_at": later(5)}
    ended = event("evt_d", later(5), after, event_type="customer.subscription.deleted")
    return bundle([before]), bundle([after], events=[ended])


def paid_later() -> tuple[CustomerBundle, CustomerBundle]:
    # open and 10 days past due at the as-of date; paid 3 days later
    owed = invoice(due_date=days_ago(10), finalized_at=days_ago(40))
    paid = copy.deepcopy(owed)
    paid.update(status="paid", amount_remaining=0, amount_paid=1000, next_payment_attempt=None)
    paid["status_transitions"]["paid_at"] = later(3)
    return bundle([subscription(status="past_due")], [owed]), bundle([subscription()], [paid])


def downgraded_later() -> tuple[CustomerBundle, CustomerBundle]:
    before = subscription(item(PRO))
    after = subscription(item(BASIC))
    moved = event("evt_m", later(5), after, previous={"items": {"data": [item(PRO)]}})
    return (
        bundle([before], prices=[BASIC, PRO], products=PRODUCTS),
        bundle([after], events=[moved], prices=[BASIC, PRO], products=PRODUCTS),
    )


def plus(found: CustomerBundle, **more: list[dict[str, Any]]) -> CustomerBundle:
    return replace(found, **{name: [*getattr(found, name), *extra] for name, extra in more.items()})


STEADY = bundle([subscription()])
CASES = [
    pytest.param(
        STEADY,
        plus(STEADY, charges=[charge(f"ch_{n}", days=-n) for n in (1, 2, 3)]),
        id="failed-charges-later",
    ),
    pytest.param(
        STEADY, plus(STEADY, invoices=[invoice(finalized_at=later(2), due_date=later(2))]), id="invoice-later"
    ),
    pytest.param(
        STEADY,
        plus(
            STEADY,
            subscriptions=[
                subscription(sub_id="sub_2", status="trialing", start=later(1), trial_end=later(15))
            ],
        ),
        id="subscription-later",
    ),
    pytest.param(*cancelled_later(with_event=True), id="cancel-requested-later-event"),
    pytest.param(*cancelled_later(with_event=False), id="cancel-requested-later-no-event"),
    pytest.param(*ended_later(), id="ended-later"),
    pytest.param(*paid_later(), id="paid-later"),
    pytest.param(*downgraded_later(), id="downgraded-later"),
    pytest.param(
        STEADY,
        replace(
            STEADY,
            customer={**customer(), "deleted": True},
            events=[event("evt_x", later(4), customer(), event_type="customer.deleted")],
        ),
        id="customer-deleted-later",
    ),
]


@pytest.mark.parametrize(("known_then", "known_now"), CASES)
def test_given_objects_and_events_after_the_as_of_date_when_backtesting_then_the_past_score_is_unchanged(
    known_then: CustomerBundle, known_now: CustomerBundle
) -> None:
    then = evaluate(known_then).health
    rebuilt = score_at(known_now, HealthConfig(), AS_OF)
    assert rebuilt is not None
    assert (rebuilt.risk_score, rebuilt.risk_reasons, rebuilt.mrr, rebuilt.subscription_health) == (
        then.risk_score,
        then.risk_reasons,
        then.mrr,
        then.subscription_health,
    )
    # and the later facts do show today (the cases are not empty)
    today = evaluate(known_now, as_of=AS_OF + timedelta(days=6)).health
    assert (today.risk_score, today.risk_reasons, today.mrr, today.deleted) != (
        then.risk_score,
        then.risk_reasons,
        then.mrr,
        then.deleted,
    )


def test_given_a_customer_created_after_the_as_of_date_when_backtesting_then_it_is_not_scored() -> None:
    newcomer = bundle([subscription(start=later(3))], the_customer=customer(created=later(3)))
    assert score_at(newcomer, HealthConfig(), AS_OF) is None


@pytest.mark.parametrize(
    ("scores", "churned", "expected"),
    [
        pytest.param([1, 2, 3, 4], [False, False, True, True], 1.0, id="perfect"),
        pytest.param([4, 3, 2, 1], [False, False, True, True], 0.0, id="reversed"),
        pytest.param([5, 5, 5, 5], [False, True, False, True], 0.5, id="all-tied"),
        pytest.param([0, 10, 10, 20], [False, False, True, True], 0.875, id="one-tie"),
        pytest.param([1, 2], [False, False], None, id="no-churn"),
    ],
)
def test_given_scores_and_outcomes_when_measuring_then_roc_auc_counts_ties_half(
    scores: list[int], churned: list[bool], expected: float | None
) -> None:
    assert roc_auc(scores, churned) == expected


def customer_bundle(customer_id: str, *, failing: bool, amount: int = 1000) -> CustomerBundle:
    the_price = price(f"price_{customer_id}", amount=amount)
    charges = [charge(f"ch_{customer_id}_{n}", days=n) for n in (1, 2, 3)] if failing else []
    found = bundle([subscription(item(the_price), customer=customer_id)], charges=charges, prices=[the_price])
    return replace(found, customer_id=customer_id, customer={**customer(), "id": customer_id})


def test_given_a_book_when_backtesting_then_top_decile_precision_recall_and_mrr_capture_are_counted() -> None:
    # 20 paying customers: 2 failing (the top decile), of whom 1 churns; 2 more churn without warning
    bundles = [customer_bundle(f"cus_{n:02d}", failing=n < 2, amount=1000 + n) for n in range(20)]
    churns = [
        Churn("cus_00", AS_OF + timedelta(days=5)),
        Churn("cus_10", AS_OF + timedelta(days=29)),
        Churn("cus_11", AS_OF + timedelta(days=12)),
        Churn("cus_12", AS_OF + timedelta(days=31)),  # after the horizon
        Churn("cus_13", AS_OF - timedelta(days=1)),  # before the as-of date
    ]
    result = backtest(bundles, churns, AS_OF, horizon_days=30)
    assert (result.customers, result.churned, result.top_decile, result.top_decile_churned) == (20, 3, 2, 1)
    assert (result.precision, result.recall) == (0.5, pytest.approx(1 / 3))
    assert result.churned_mrr_by_currency == {"usd": 1000 + 1010 + 1011}
    assert result.captured_mrr_by_currency == {"usd": 1000}
    # cus_00 ties cus_01 and beats 16; cus_10 and cus_11 lose to cus_01 and tie 16: (16.5 + 8 + 8) / 51
    assert result.auc == pytest.approx(32.5 / 51)
