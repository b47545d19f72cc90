"""Plan tier of a price/plan (contract section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from destination_perly.health.model import TierRule
from destination_perly.health.mrr import Catalog, ItemAmount
from destination_perly.health.values import as_dict


@dataclass(frozen=True)
class Tier:
    name: str | None
    rank: Fraction
    from_map: bool  # True when the tier map named it (its rank is then comparable across products)


def tier_of(item: ItemAmount, rules: tuple[TierRule, ...], catalog: Catalog) -> Tier:
    """The map entry matching the price id, plan id, product id or lookup key (in that order of
    preference), else the product's name ranked by the item's normalised monthly unit price."""
    keys = [item.price_id, item.plan_id, item.product_id, item.lookup_key]
    for key in keys:
        if key is None:
            continue
        for rule in rules:
            if rule.match == key:
                return Tier(rule.tier, Fraction(str(rule.rank)), True)
    product = as_dict(catalog.products.get(item.product_id or ""))
    name = product.get("name")
    return Tier(name if isinstance(name, str) and name else item.product_id, item.unit_monthly, False)
