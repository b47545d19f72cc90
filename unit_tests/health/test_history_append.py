"""Append-only history (contract section 7): what a later evaluation adds to the stored movements and
plan changes, and how a change is dated when only a snapshot difference shows it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from destination_perly.health.model import CustomerBundle, CustomerEvaluation, MrrMovement, StoredHistory
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
    item,
    line,
    paid_invoice,
    subscription,
)

MONTH = 30 * 86400
EARLIER = AS_OF - timedelta(days=7)  # the previous sync's as_of


def story(movements: list[MrrMovement] | tuple[MrrMovement, ...]) -> list[tuple[str, str, int, int]]:
    return [(m.kind, m.currency, m.mrr_before, m.mrr_after) for m in movements]


def monthly_invoices(price_id: str, amount: int, quantity: int, periods: int, last_start: int) -> list[Any]:
    """`periods` paid monthly invoices, the last one starting at `last_start`."""
    starts = [last_start - index * MONTH for index in reversed(range(periods))]
    return [paid_invoice(f"in_{start}", start, start + MONTH, price_id, amount, quantity) for start in starts]


def proration_invoice(at: int, end: int, lines: list[tuple[str, int, int]]) -> dict[str, Any]:
    """A mid-period change billed at once: (price, quantity, amount) per proration line."""
    found = paid_invoice(f"in_prorate_{at}", at, end, lines[0][0], 0)
    found["lines"]["data"] = [
        line(at, end, price_id, amount, quantity, proration=True) for price_id, quantity, amount in lines
    ]
    return found


def stored(evaluation: CustomerEvaluation, until: datetime) -> StoredHistory:
    """What the store holds after saving an evaluation made at `until`."""
    return StoredHistory(tuple(evaluation.movements), tuple(evaluation.plan_changes), until)


def with_history(found: CustomerBundle, history: StoredHistory) -> CustomerBundle:
    found.history = history
    return found


# ---------------------------------------------------------------------------------------------------
# Dating a change no invoice or event dates


def test_given_seats_added_since_the_last_billed_period_without_evidence_then_dated_at_as_of() -> None:
    # billed 3 seats of Basic each month, the last period starting 10 days ago; the subscription now
    # has 5 seats and nothing says when that happened: dated at the end of the interval (as_of), never
    # back-dated to the period start
    invoices = monthly_invoices("price_basic", 3000, 3, periods=3, last_start=days_ago(10))
    sub = subscription(item(BASIC, 5), start=days_ago(70))
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC]))

    assert story(evaluation.movements) == [("new", "usd", 0, 3000), ("expansion", "usd", 3000, 5000)]
    assert evaluation.movements[1].at == AS_OF
    assert evaluation.health.mrr_30d_ago == 3000


def test_given_an_item_added_since_the_last_billed_period_then_dated_when_the_item_was_created() -> None:
    invoices = monthly_invoices("price_basic", 1000, 1, periods=3, last_start=days_ago(10))
    added = item(PRO, created=days_ago(4))
    sub = subscription(item(BASIC), added, start=days_ago(70))
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC, PRO]))

    assert story(evaluation.movements)[-1] == ("expansion", "usd", 1000, 4000)
    assert evaluation.movements[-1].at == to_time(days_ago(4))


def test_given_a_plan_billed_only_on_invoice_lines_when_a_proration_left_it_then_contraction_not_churn() -> (
    None
):
    # Without Read on Prices the old plan (Pro) is known only from the lines that billed it; the
    # subscription now carries Basic. Moving off Pro mid-period is a contraction at the change.
    change = days_ago(45)
    invoices = monthly_invoices("price_pro", 3000, 1, periods=3, last_start=days_ago(60))
    invoices.append(
        proration_invoice(change, days_ago(30), [("price_pro", 1, -1500), ("price_basic", 1, 500)])
    )
    invoices += monthly_invoices("price_basic", 1000, 1, periods=1, last_start=days_ago(30))
    for found in invoices:  # Stripe gives each line's unit amount
        for entry in found["lines"]["data"]:
            unit = 3000 if entry["pricing"]["price_details"]["price"] == "price_pro" else 1000
            entry["pricing"]["unit_amount_decimal"] = str(unit)
    sub = subscription(item(BASIC), start=days_ago(120))
    evaluation = evaluate(bundle([sub], invoices, products=PRODUCTS))  # no prices stream

    assert story(evaluation.movements) == [("new", "usd", 0, 3000), ("contraction", "usd", 3000, 1000)]
    assert evaluation.movements[1].at == to_time(change)
    assert [(c.kind, c.from_plan, c.to_plan) for c in evaluation.plan_changes] == [
        ("downgrade", "price_pro", "price_basic")
    ]


# ---------------------------------------------------------------------------------------------------
# Reconciling with what is stored


def test_given_stored_history_when_evaluated_again_at_the_same_time_then_nothing_is_appended() -> None:
    now = subscription(item(BASIC))
    found = bundle(
        [now], events=[event("evt_1", days_ago(10), now, previous={"items": {"data": [item(PRO)]}})]
    )
    first = evaluate(found)

    again = evaluate(with_history(found, stored(first, AS_OF)))

    assert (again.movements, again.plan_changes) == ([], [])
    assert again.health == first.health  # flags and figures read the stored rows the same way


def test_given_stored_history_when_a_proration_later_dates_a_change_before_it_then_nothing_is_appended() -> (
    None
):
    # Sync 1 (7 days ago) saw 5 seats with only 3 billed: it stored the expansion at its as_of. The
    # renewal since shows the proration, dated 9 days ago: already told by the stored rows.
    invoices = monthly_invoices("price_basic", 3000, 3, periods=3, last_start=days_ago(25))
    sub = subscription(item(BASIC, 5), start=days_ago(85))
    first = evaluate(bundle([sub], invoices, prices=[BASIC]), as_of=EARLIER)
    assert story(first.movements)[-1] == ("expansion", "usd", 3000, 5000)

    later = [
        *invoices,
        proration_invoice(days_ago(9), days_ago(-5), [("price_basic", 3, -1000), ("price_basic", 5, 1600)]),
        *monthly_invoices("price_basic", 5000, 5, periods=1, last_start=days_ago(-5) - MONTH),
    ]
    second = evaluate(with_history(bundle([sub], later, prices=[BASIC]), stored(first, EARLIER)))

    assert second.movements == []
    assert second.health.mrr == 5000


def test_given_a_downgrade_seen_by_an_event_or_only_as_a_snapshot_difference_then_the_same_movement() -> None:
    # Sync 1 (7 days ago) stored Pro at 3000. The subscription moved to Basic 3 days ago: a full key
    # sees the event; a key without events sees only that the object differs from what was billed.
    invoices = monthly_invoices("price_pro", 3000, 1, periods=2, last_start=days_ago(20))
    was = subscription(item(PRO), start=days_ago(50))
    first = evaluate(bundle([was], invoices, prices=[BASIC, PRO], products=PRODUCTS), as_of=EARLIER)
    now = subscription(item(BASIC), start=days_ago(50))
    downgrade = event("evt_down", days_ago(3), now, previous={"items": {"data": [item(PRO)]}})

    def second(events: list[dict[str, Any]]) -> CustomerEvaluation:
        found = bundle([now], invoices, events=events, prices=[BASIC, PRO], products=PRODUCTS)
        return evaluate(with_history(found, stored(first, EARLIER)))

    by_event, by_snapshot = second([downgrade]), second([])

    assert story(by_event.movements) == story(by_snapshot.movements) == [("contraction", "usd", 3000, 1000)]
    assert by_event.movements[0].at == to_time(days_ago(3))  # the event dates it
    assert by_snapshot.movements[0].at == AS_OF  # nothing does: the end of the interval
    for evaluation in (by_event, by_snapshot):
        assert [(c.kind, c.from_plan, c.to_plan) for c in evaluation.plan_changes] == [
            ("downgrade", "price_pro", "price_basic")
        ]
        assert evaluation.health.flag_downgrade
        assert evaluation.health.flag_mrr_contraction


def test_given_a_plan_change_stored_at_the_last_sync_when_a_renewal_dates_it_later_then_not_appended() -> (
    None
):
    # Sync 1 saw Basic on a subscription billed Pro (no proration: same price): it stored the downgrade
    # at its as_of. The renewal since bills Basic; the rebuild would date the change there.
    invoices = monthly_invoices("price_pro", 3000, 1, periods=2, last_start=days_ago(25))
    now = subscription(item(BASIC), start=days_ago(55))
    first = evaluate(bundle([now], invoices, prices=[BASIC, PRO], products=PRODUCTS), as_of=EARLIER)
    assert [(c.kind, c.at) for c in first.plan_changes] == [("downgrade", EARLIER)]

    renewed = [*invoices, *monthly_invoices("price_basic", 1000, 1, periods=1, last_start=days_ago(5))]
    found = bundle([now], renewed, prices=[BASIC, PRO], products=PRODUCTS)
    second = evaluate(with_history(found, stored(first, EARLIER)))

    assert (second.movements, second.plan_changes) == ([], [])
    assert second.health.flag_downgrade  # the stored downgrade still counts


def test_given_stored_history_telling_the_past_differently_then_it_stands_and_mrr_30d_ago_reads_it() -> None:
    # The store says 5000 until 20 days ago, then 1000 (e.g. written by an older version). The rebuild
    # from today's objects knows nothing of it; the stored rows stand, and the new change is measured
    # from the stored level.
    stored_rows = (
        MrrMovement("cus_1", AS_OF - timedelta(days=300), "new", None, "usd", 0, 5000, 5000, "sub_1"),
        MrrMovement(
            "cus_1", AS_OF - timedelta(days=20), "contraction", None, "usd", 5000, 1000, -4000, "sub_1"
        ),
    )
    found = with_history(bundle([subscription(item(BASIC, 2))]), StoredHistory(stored_rows, (), EARLIER))
    evaluation = evaluate(found)

    assert story(evaluation.movements) == [("expansion", "usd", 1000, 2000)]
    assert evaluation.movements[0].at == AS_OF
    assert (evaluation.health.mrr_30d_ago, evaluation.health.flag_mrr_contraction) == (5000, True)


def test_given_past_due_billed_on_open_invoices_without_events_then_churn_on_the_delinquency_day() -> None:
    # paid monthly until 90 days ago; the invoices of the last three periods are open (due at their
    # start): the oldest makes it delinquent 31 days after, 59 days ago, not when the last was billed
    invoices = monthly_invoices("price_basic", 1000, 1, periods=5, last_start=days_ago(30))
    for found in invoices[2:]:
        start = found["lines"]["data"][0]["period"]["start"]
        found.update(status="open", amount_remaining=1000, due_date=start)
        found["status_transitions"].update(paid_at=None, finalized_at=start)
    sub = subscription(item(BASIC), status="past_due", start=days_ago(150))
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC]))

    assert [(m.kind, m.churn_type) for m in evaluation.movements] == [("new", None), ("churn", "involuntary")]
    assert evaluation.movements[1].at == to_time(days_ago(90) + 31 * 86400)


def test_given_the_first_periods_invoice_was_voided_then_that_period_has_the_earliest_billed_items() -> None:
    # Basic from 100 days ago (the first invoice voided), Pro since 10 days ago: today's Pro is not
    # assumed for the first month, so there is no made-up new 3000 then contraction
    invoices = monthly_invoices("price_basic", 1000, 1, periods=3, last_start=days_ago(40))
    invoices[0]["status"] = "void"
    invoices += monthly_invoices("price_pro", 3000, 1, periods=1, last_start=days_ago(10))
    sub = subscription(item(PRO), start=days_ago(100))
    evaluation = evaluate(bundle([sub], invoices, prices=[BASIC, PRO], products=PRODUCTS))

    assert story(evaluation.movements) == [("new", "usd", 0, 1000), ("expansion", "usd", 1000, 3000)]
    assert evaluation.movements[0].at == to_time(days_ago(100))
