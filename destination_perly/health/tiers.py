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
    rank: Fraction  # the map's rank when `from_map`, else the normalised monthly unit price
    from_map: bool  # True when the tier map named it (its rank is then comparable across products)
    unit_monthly: Fraction  # the item's normalised monthly unit price, mapped or not
    same_plan_key: str | None  # equal for two prices of one plan (map tier, else product)


def tier_of(item: ItemAmount, rules: tuple[TierRule, ...], catalog: Catalog) -> Tier:
    """The map entry matching the price id, plan id, product id or lookup key (in that order of
    preference), else the product's name ranked by the item's normalised monthly unit price. Without
    the product (a key without Read on Products), the name is the price's lookup key, else its
    nickname, else the product id: names differ by key, ranks never do."""
    keys = [item.price_id, item.plan_id, item.product_id, item.lookup_key]
    for key in keys:
        if key is None:
            continue
        for rule in rules:
            if rule.match == key:
                return Tier(rule.tier, Fraction(str(rule.rank)), True, item.unit_monthly, f"map:{rule.tier}")
    product = as_dict(catalog.products.get(item.product_id or ""))
    name = product.get("name")
    if not (isinstance(name, str) and name):
        name = item.lookup_key or item.nickname or item.product_id
    return Tier(name, item.unit_monthly, False, item.unit_monthly, item.product_id or name)


def direction(old: Tier, new: Tier) -> str | None:
    """ "upgrade", "downgrade" or None. Two mapped prices compare by map rank; otherwise (a partial
    map, or no map) by normalised monthly unit price. The same plan (map tier or product, e.g. on
    another interval) is neither."""
    if old.same_plan_key is not None and old.same_plan_key == new.same_plan_key:
        return None
    if old.from_map and new.from_map:
        before, after = old.rank, new.rank
    else:
        before, after = old.unit_monthly, new.unit_monthly
    if before == after:
        return None
    return "upgrade" if after > before else "downgrade"
