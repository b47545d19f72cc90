"""Plan and plan tier (contract sections 2 and 5)."""

from __future__ import annotations

from typing import Any

import pytest

from destination_perly.health import TierRule
from unit_tests.health.builders import bundle, evaluate, item, price, products_named, subscription

PRO = price("price_pro", amount=3000, product="prod_pro", lookup_key="pro_monthly")
PRO_ITEM = item(PRO, 1, plan={"id": "plan_pro_legacy", "object": "plan"})

TIER_MAP = [
    pytest.param((TierRule("price_pro", "Gold", 3),), "Gold", id="by-price-id"),
    pytest.param((TierRule("plan_pro_legacy", "Gold", 3),), "Gold", id="by-plan-id"),
    pytest.param((TierRule("prod_pro", "Gold", 3),), "Gold", id="by-product-id"),
    pytest.param((TierRule("pro_monthly", "Gold", 3),), "Gold", id="by-lookup-key"),
    # price id is preferred over the product id when both are mapped
    pytest.param(
        (TierRule("prod_pro", "Silver", 2), TierRule("price_pro", "Gold", 3)), "Gold", id="price-first"
    ),
    # no entry matches: the product's name
    pytest.param((TierRule("price_other", "Gold", 3),), "Pro", id="unmatched-product-name"),
    pytest.param((), "Pro", id="no-map-product-name"),
]


@pytest.mark.parametrize(("rules", "expected"), TIER_MAP)
def test_given_tier_map_when_classifying_then_price_plan_product_or_lookup_key_decide(
    rules: tuple[TierRule, ...], expected: str
) -> None:
    found = bundle([subscription(PRO_ITEM)], products=products_named({"prod_pro": "Pro"}))
    health = evaluate(found, tiers=rules).health
    assert (health.plan_id, health.plan_tier) == ("price_pro", expected)


NAME_WITHOUT_PRODUCTS = [
    pytest.param({"lookup_key": "pro_monthly", "nickname": "Pro monthly"}, "pro_monthly", id="lookup-key"),
    pytest.param({"lookup_key": None, "nickname": "Pro monthly"}, "Pro monthly", id="nickname"),
    pytest.param({"lookup_key": None, "nickname": None}, "prod_pro", id="product-id"),
]


@pytest.mark.parametrize(("names", "expected"), NAME_WITHOUT_PRODUCTS)
def test_given_no_product_read_when_classifying_then_lookup_key_else_nickname_else_product_id_names_it(
    names: dict[str, Any], expected: str
) -> None:
    assert evaluate(bundle([subscription(item({**PRO, **names}))])).health.plan_tier == expected


def test_given_expanded_product_on_price_when_classifying_then_its_id_is_used() -> None:
    expanded = {**PRO, "product": {"id": "prod_pro", "name": "Pro"}}
    found = bundle([subscription(item(expanded))], products=products_named({"prod_pro": "Pro plan"}))
    assert evaluate(found).health.plan_tier == "Pro plan"


LARGEST = [
    # the largest counting item gives the plan: 2 x 1000 = 2000 beats 1500
    pytest.param(
        [item(price("p_small", amount=1500)), item(price("p_seats", amount=1000), 2)],
        "p_seats",
        id="by-amount",
    ),
    # a yearly 24000 is 2000/month and beats a monthly 1500
    pytest.param(
        [item(price("p_month", amount=1500)), item(price("p_year", amount=24000, interval="year"))],
        "p_year",
        id="normalised-before-comparing",
    ),
    # a metered item never gives the plan
    pytest.param(
        [
            item(price("p_base", amount=100)),
            item(price("p_meter", amount=99999, recurring={"interval": "month", "usage_type": "metered"})),
        ],
        "p_base",
        id="metered-never",
    ),
]


@pytest.mark.parametrize(("items", "expected"), LARGEST)
def test_given_several_items_when_choosing_the_plan_then_the_largest_counting_item_wins(
    items: list[dict[str, Any]], expected: str
) -> None:
    assert evaluate(bundle([subscription(*items)])).health.plan_id == expected


def test_given_only_a_trial_when_choosing_the_plan_then_the_trial_plan_is_shown() -> None:
    sub = subscription(item(PRO), status="trialing", trial_end=2_000_000_000)
    health = evaluate(bundle([sub], products=products_named({"prod_pro": "Pro"}))).health
    assert (health.plan_id, health.plan_tier, health.mrr) == ("price_pro", "Pro", 0)
