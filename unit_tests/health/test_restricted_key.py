"""What the recommended 4-permission key gives (contract sections 2, 3, 5 and 9): prices, tiered
amounts and coupons rebuilt from subscriptions and invoices equal what a full key's catalog gives;
what cannot be told is named in `limitations`; partial tier maps; past-due amounts per currency."""

from __future__ import annotations

from typing import Any

import pytest

from destination_perly.health import TierRule
from unit_tests.health.builders import (
    bundle,
    coupon,
    days_ago,
    discount,
    evaluate,
    event,
    invoice,
    item,
    line,
    paid_invoice,
    price,
    subscription,
    tier,
    tiered_price,
)

TIERED = tiered_price("graduated", [tier(10, 4000), tier(None, 3000)])
TIERED_AS_EMBEDDED = {key: value for key, value in TIERED.items() if key != "tiers"}  # never expanded


def monthly_invoices(price_id: str, amount: int, quantity: int, months: int, **extra: Any) -> list[Any]:
    """Paid renewals of one subscription, newest last, 30-day periods up to today."""
    found = []
    for n in range(months, 0, -1):
        start = days_ago(30 * n - 20)
        paid = paid_invoice(f"in_{n}", start, start + 30 * 86400, price_id, amount, quantity)
        paid.update(created=start, billing_reason="subscription_cycle", subtotal=amount, **extra)
        found.append(paid)
    return found


def test_tiered_item_without_tiers_costs_what_its_last_full_period_invoice_charged() -> None:
    invoices = monthly_invoices("price_tiered", 4000 * 10 + 3000 * 2, 12, 2)
    mapped = (TierRule("prod_basic", "Enterprise", 4),)
    full = evaluate(
        bundle([subscription(item(TIERED, 12))], invoices=invoices, prices=[TIERED]), tiers=mapped
    )
    restricted = evaluate(
        bundle([subscription(item(TIERED_AS_EMBEDDED, 12))], invoices=invoices), tiers=mapped
    )

    assert full.health.mrr == restricted.health.mrr == 46000
    assert restricted.health.limitations == []
    # Unmapped, its rank (one unit's price) is estimated, and the row says so.
    unmapped = evaluate(bundle([subscription(item(TIERED_AS_EMBEDDED, 12))], invoices=invoices))
    assert any(
        text.startswith("plan rank: tiered price price_tiered") for text in unmapped.health.limitations
    )


def test_tiered_item_never_billed_at_its_quantity_is_left_out_and_named() -> None:
    restricted = evaluate(bundle([subscription(item(TIERED_AS_EMBEDDED, 12))]))

    assert restricted.health.mrr == 0
    assert any("rak_plan_read" in text and "price_tiered" in text for text in restricted.health.limitations)


def with_discount(found: dict[str, Any], coupon_id: str, amount: int) -> dict[str, Any]:
    return {
        **found,
        "discounts": [f"di_{coupon_id}"],
        "total_discount_amounts": [{"amount": amount, "discount": f"di_{coupon_id}"}],
    }


@pytest.mark.parametrize(
    ("terms", "off"),
    [
        pytest.param({"percent_off": 20.0}, 600, id="percent"),
        pytest.param({"amount_off": 1000}, 1000, id="amount"),
    ],
)
def test_forever_coupon_seen_on_two_invoices_reduces_mrr_as_the_coupon_would(
    terms: dict[str, Any], off: int
) -> None:
    the_coupon = coupon("co_x", duration="forever", **terms)
    invoices = [with_discount(found, "co_x", off) for found in monthly_invoices("price_basic", 3000, 1, 2)]
    sub = subscription(item(price(amount=3000)), discounts=[discount("co_x")])
    full = evaluate(bundle([sub], invoices=invoices, coupons=[the_coupon]))
    restricted = evaluate(bundle([sub], invoices=invoices))

    assert full.health.mrr == restricted.health.mrr == 3000 - off
    assert restricted.health.limitations == []


def test_fixed_coupon_that_took_all_of_a_small_proration_is_still_a_fixed_amount() -> None:
    invoices = [with_discount(found, "co_x", 1000) for found in monthly_invoices("price_basic", 2900, 1, 2)]
    small = with_discount(monthly_invoices("price_basic", 35, 1, 1)[0], "co_x", 35)
    small["id"] = "in_proration"
    sub = subscription(item(price(amount=3000)), discounts=[discount("co_x")])
    found = evaluate(bundle([sub], invoices=[*invoices, small])).health
    assert (found.mrr, found.limitations) == (2000, [])


def test_percent_coupon_is_told_from_amount_when_subtotals_differ() -> None:
    invoices = [
        with_discount(found, "co_x", found["subtotal"] // 5)
        for found in monthly_invoices("price_basic", 3000, 1, 1) + monthly_invoices("price_basic", 4500, 1, 1)
    ]
    invoices[1]["id"] = "in_later"
    sub = subscription(item(price(amount=6000)), discounts=[discount("co_x")])

    assert evaluate(bundle([sub], invoices=invoices)).health.mrr == 4800  # 20% off, not a fixed 900


def test_coupon_still_attached_after_one_invoice_used_it_lasts_forever() -> None:
    # Stripe removes a `once` discount as soon as an invoice used it: still there, it is forever.
    invoices = [with_discount(found, "co_x", 600) for found in monthly_invoices("price_basic", 3000, 1, 1)]
    sub = subscription(item(price(amount=3000)), discounts=[discount("co_x")])
    restricted = evaluate(bundle([sub], invoices=invoices)).health
    assert (restricted.mrr, restricted.limitations) == (2400, [])


def test_coupon_no_invoice_has_used_yet_is_not_taken_off_and_is_named() -> None:
    invoices = monthly_invoices("price_basic", 3000, 1, 1)  # billed before the coupon came
    sub = subscription(item(price(amount=3000)), discounts=[discount("co_x", start=days_ago(2))])
    restricted = evaluate(bundle([sub], invoices=invoices))

    assert restricted.health.mrr == 3000
    assert any("co_x" in text and "rak_coupon_read" in text for text in restricted.health.limitations)
    # A key that reads the coupon knows it lasts forever.
    full = evaluate(bundle([sub], invoices=invoices, coupons=[coupon("co_x", percent_off=20.0)])).health
    assert (full.mrr, full.limitations) == (2400, [])


def test_repeating_coupon_is_known_by_its_end_and_never_changes_mrr() -> None:
    invoices = [with_discount(found, "co_x", 600) for found in monthly_invoices("price_basic", 3000, 1, 3)]
    sub = subscription(item(price(amount=3000)), discounts=[discount("co_x", end=days_ago(-30))])
    restricted = evaluate(bundle([sub], invoices=invoices))

    assert (restricted.health.mrr, restricted.health.limitations) == (3000, [])


def test_item_discount_applies_before_the_subscription_discount() -> None:
    item_coupon = coupon("co_item", amount_off=1000, duration="forever")
    sub_coupon = coupon("co_sub", percent_off=50.0, duration="forever")
    sub = subscription(
        item(price(amount=3000), discounts=[discount("co_item")]), discounts=[discount("co_sub")]
    )
    # (3000 - 1000) x 50%, not 3000 x 50% - 1000
    assert evaluate(bundle([sub], coupons=[item_coupon, sub_coupon])).health.mrr == 1000


def test_item_discount_given_as_an_id_resolves_through_the_expanded_copy_in_an_event() -> None:
    item_coupon = coupon("co_item", percent_off=10.0, duration="forever")
    expanded = subscription(item(price(amount=3000), discounts=[discount("co_item")]))
    bare = subscription(item(price(amount=3000), discounts=["di_co_item"]))
    found = evaluate(bundle([bare], events=[event("evt_1", days_ago(5), expanded)], coupons=[item_coupon]))
    assert (found.health.mrr, found.problems) == (2700, [])


PLAN_29 = price("price_29", amount=2900, product="prod_basic")
PLAN_49 = price("price_49", amount=4900, product="prod_pro")


def moved(old: dict[str, Any], new: dict[str, Any], rules: tuple[TierRule, ...]) -> list[str]:
    before = subscription(item(old))
    after = subscription(item(new))
    history = [event("evt_1", days_ago(5), after, previous={"items": before["items"]})]
    found = evaluate(bundle([after], events=history, prices=[old, new]), tiers=rules)
    return [change.kind for change in found.plan_changes]


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        pytest.param((TierRule("prod_pro", "Pro", 2),), ["upgrade"], id="unmapped-29-to-mapped-49"),
        pytest.param((TierRule("prod_basic", "Basic", 9),), ["upgrade"], id="mapped-29-to-unmapped-49"),
        pytest.param(
            (TierRule("prod_basic", "Basic", 2), TierRule("prod_pro", "Pro", 1)),
            ["downgrade"],
            id="both-mapped",
        ),
        pytest.param((), ["upgrade"], id="no-map"),
    ],
)
def test_partial_map_compares_by_monthly_unit_price_and_full_map_by_rank(
    rules: tuple[TierRule, ...], expected: list[str]
) -> None:
    assert moved(PLAN_29, PLAN_49, rules) == expected


def test_same_product_on_another_interval_is_no_plan_change_without_product_names() -> None:
    monthly = price("price_m", amount=3000, product="prod_pro", lookup_key="pro_monthly")
    yearly = price("price_y", amount=30000, interval="year", product="prod_pro", lookup_key="pro_yearly")
    assert moved(monthly, yearly, ()) == []


def test_past_due_is_given_per_currency_and_in_the_main_currency_without_mrr_or_customer_currency() -> None:
    late_eur = invoice("in_eur", due_date=days_ago(10), amount_remaining=700, currency="eur")
    late_usd = invoice("in_usd", due_date=days_ago(12), amount_remaining=500)
    found = evaluate(
        bundle(invoices=[late_eur, late_usd], the_customer={"id": "cus_1", "object": "customer"})
    ).health

    assert found.past_due_by_currency == {"eur": 700, "usd": 500}
    assert (found.currency, found.past_due_amount) == ("eur", 700)
    assert "EUR 7.00, USD 5.00 outstanding" in " ".join(found.risk_reasons)


def test_past_due_in_another_currency_than_mrr_stays_in_past_due_by_currency() -> None:
    late_eur = invoice("in_eur", due_date=days_ago(10), amount_remaining=700, currency="eur")
    found = evaluate(bundle([subscription(item(price(amount=3000)))], invoices=[late_eur])).health

    assert (found.currency, found.past_due_amount, found.past_due_by_currency) == ("usd", 0, {"eur": 700})
    assert found.flag_invoice_aging


def test_line_price_rebuilt_from_an_invoice_keeps_its_product_for_the_tier_map() -> None:
    old_line = line(days_ago(90), days_ago(60), "price_old", 2900)
    old_line["pricing"]["price_details"]["product"] = "prod_basic"
    old_line["pricing"]["unit_amount_decimal"] = "2900"
    old = paid_invoice("in_old", days_ago(90), days_ago(60), "price_old", 2900)
    old["lines"]["data"] = [old_line]
    new = paid_invoice("in_new", days_ago(60), days_ago(30), "price_new", 2500)
    current = subscription(item(price("price_new", amount=2500, product="prod_pro")), start=days_ago(90))
    rules = (TierRule("prod_basic", "Basic", 1), TierRule("prod_pro", "Pro", 2))
    found = evaluate(bundle([current], invoices=[old, new]), tiers=rules)

    assert [(c.kind, c.from_tier, c.to_tier) for c in found.plan_changes] == [("upgrade", "Basic", "Pro")]
