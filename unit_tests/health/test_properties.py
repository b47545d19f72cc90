"""Property tests: MRR invariants that must hold for any price, quantity, coupon or time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from unit_tests.health.builders import (
    AS_OF,
    bundle,
    coupon,
    discount,
    evaluate,
    item,
    price,
    subscription,
)

amounts = st.integers(min_value=0, max_value=10**7)
quantities = st.integers(min_value=0, max_value=500)
intervals = st.sampled_from(["day", "week", "month", "year"])
counts = st.integers(min_value=1, max_value=12)
FAST = settings(max_examples=60, deadline=None)


def mrr(subs: list[dict[str, Any]], **kwargs: Any) -> int:
    return evaluate(bundle(subs, **kwargs)).health.mrr


@FAST
@given(amount=amounts, quantity=quantities)
def test_yearly_price_of_twelve_times_monthly_gives_the_same_mrr(amount: int, quantity: int) -> None:
    monthly = subscription(item(price("p_m", amount=amount), quantity))
    yearly = subscription(item(price("p_y", amount=12 * amount, interval="year"), quantity))
    assert mrr([monthly]) == mrr([yearly])


@FAST
@given(
    amount=amounts,
    quantity=quantities,
    percent=st.integers(min_value=1, max_value=100),
    off=st.integers(min_value=1, max_value=10**6),
    duration=st.sampled_from(["once", "repeating"]),
    use_percent=st.booleans(),
)
def test_once_or_repeating_coupon_never_changes_mrr(
    amount: int, quantity: int, percent: int, off: int, duration: str, use_percent: bool
) -> None:
    the_coupon = (
        coupon(percent_off=percent, duration=duration)
        if use_percent
        else coupon(amount_off=off, duration=duration)
    )
    plain = subscription(item(price(amount=amount), quantity))
    discounted = subscription(item(price(amount=amount), quantity), discounts=[discount("co_1")])
    assert mrr([plain]) == mrr([discounted], coupons=[the_coupon])


@FAST
@given(
    amount=amounts,
    quantity=quantities,
    interval=intervals,
    count=counts,
    percent=st.one_of(st.none(), st.integers(min_value=0, max_value=100)),
    off=st.one_of(st.none(), st.integers(min_value=0, max_value=10**8)),
)
def test_mrr_is_never_negative(
    amount: int, quantity: int, interval: str, count: int, percent: int | None, off: int | None
) -> None:
    coupons = []
    discounts = []
    if percent is not None:
        coupons.append(coupon("co_p", percent_off=percent))
        discounts.append(discount("co_p"))
    if off is not None:
        coupons.append(coupon("co_a", amount_off=off))
        discounts.append(discount("co_a"))
    sub = subscription(
        item(price(amount=amount, interval=interval, count=count), quantity), discounts=discounts
    )
    assert mrr([sub], coupons=coupons) >= 0


@FAST
@given(
    base=amounts,
    extra=amounts,
    quantity=quantities,
    interval=intervals,
    percent=st.one_of(st.none(), st.integers(min_value=0, max_value=100)),
)
def test_adding_a_counting_item_never_lowers_mrr(
    base: int, extra: int, quantity: int, interval: str, percent: int | None
) -> None:
    discounts = [discount("co_p")] if percent is not None else []
    coupons = [coupon("co_p", percent_off=percent)] if percent is not None else []
    one = subscription(item(price("p_a", amount=base)), discounts=discounts)
    two = subscription(
        item(price("p_a", amount=base)),
        item(price("p_b", amount=extra, interval=interval), quantity),
        discounts=discounts,
    )
    assert mrr([two], coupons=coupons) >= mrr([one], coupons=coupons)


@FAST
@given(
    amount=amounts,
    quantity=quantities,
    interval=intervals,
    shift_days=st.integers(min_value=-300, max_value=3000),
)
def test_changing_as_of_never_changes_mrr_of_a_plain_active_subscription(
    amount: int, quantity: int, interval: str, shift_days: int
) -> None:
    sub = subscription(item(price(amount=amount, interval=interval), quantity))
    found = bundle([sub])
    assert evaluate(found).health.mrr == evaluate(found, as_of=AS_OF + timedelta(days=shift_days)).health.mrr


@FAST
@given(amounts_by_sub=st.lists(amounts, min_size=1, max_size=4), quantity=quantities)
def test_customer_mrr_is_the_sum_of_its_subscriptions(amounts_by_sub: list[int], quantity: int) -> None:
    subs = [
        subscription(item(price(f"p_{index}", amount=amount), quantity), sub_id=f"sub_{index}")
        for index, amount in enumerate(amounts_by_sub)
    ]
    assert mrr(subs) == sum(mrr([sub]) for sub in subs)


@FAST
@given(amount=st.integers(min_value=1, max_value=10**6), later=st.integers(min_value=0, max_value=500))
def test_movements_always_sum_to_current_mrr(amount: int, later: int) -> None:
    # whatever the history, the deltas of the movements add up to MRR now (per currency)
    old = subscription(
        item(price("p_old", amount=amount)),
        sub_id="sub_old",
        status="canceled",
        ended_at=int((AS_OF - timedelta(days=later + 1)).timestamp()),
    )
    new = subscription(
        item(price("p_new", amount=amount + later)),
        sub_id="sub_new",
        start=int((AS_OF - timedelta(days=later)).timestamp()),
    )
    evaluation = evaluate(bundle([old, new]))
    assert sum(m.delta for m in evaluation.movements if m.currency == "usd") == evaluation.health.mrr
