"""MRR of one subscription (PERLY_CONTRACT.md section 3), exact until the one half-up rounding.

Order of work for a subscription: each counting item's period amount (per-unit or tiered) is turned
into a monthly gross amount; the item's own forever discounts come off; then the subscription's
forever discounts (or, when the subscription has no active discount at all, the customer's); then any
inclusive tax rate is backed out per item; the sum is clamped at 0 and rounded half-up once.
Whether the subscription counts at a given time (status, trial, end, pause, delinquency) is decided
separately in `counting`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

import orjson

from destination_perly.health.values import (
    StripeObject,
    as_dict,
    as_list,
    currency_of,
    exact,
    ref_id,
    round_half_up,
    to_time,
)

# Fraction arithmetic is slow Python code (a gcd per operation): the common no-op operations (a
# monthly price, no inclusive tax, one unit) are skipped by testing for these objects.
ZERO = Fraction(0)
ONE = Fraction(1)

MONTHS_PER_INTERVAL: dict[str, Fraction] = {
    "day": Fraction(12, 365),
    "week": Fraction(12, 52),
    "month": ONE,
    "year": Fraction(12),
}


@dataclass(frozen=True)
class Catalog:
    """The account-wide objects the rules look things up in (by id)."""

    prices: Mapping[str, StripeObject] = field(default_factory=dict)
    coupons: Mapping[str, StripeObject] = field(default_factory=dict)
    products: Mapping[str, StripeObject] = field(default_factory=dict)
    # Expanded discount objects seen anywhere for this customer, by id: event payloads and older
    # versions carry discounts as bare ids.
    discounts: Mapping[str, StripeObject] = field(default_factory=dict)
    # What invoices charged for one full period of a tiered price, by (price id, quantity): a key
    # without Read on Prices never sees the tiers themselves.
    billed: Mapping[tuple[str, int], Fraction] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemAmount:
    """One counting item, normalised to a month, before discounts and tax."""

    item_id: str | None
    price_id: str | None
    plan_id: str | None
    product_id: str | None
    lookup_key: str | None
    nickname: str | None
    quantity: int
    months: Fraction  # months in one billing period
    gross: Fraction  # monthly amount before discounts and tax
    unit_monthly: Fraction  # monthly price of one unit (the plan's rank without a tier map)
    tax_divisor: Fraction  # 1 + inclusive tax rate; 1 for exclusive prices
    discounts: tuple[StripeObject, ...]


@dataclass(frozen=True)
class SubscriptionAmount:
    currency: str | None
    mrr: int  # what the subscription adds to MRR when it counts
    items: tuple[ItemAmount, ...]
    problems: tuple[str, ...]
    # Figures the key's permissions left unknown, each naming the permission that tells (section 9).
    limitations: tuple[str, ...] = ()


def months_in_period(recurring: StripeObject) -> Fraction | None:
    per_interval = MONTHS_PER_INTERVAL.get(str(recurring.get("interval")))
    count = recurring.get("interval_count", 1)
    if count is None:
        count = 1
    if per_interval is None or not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        return None
    return per_interval if count == 1 else per_interval * count


def resolve_price(item: StripeObject, catalog: Catalog) -> StripeObject | None:
    """The item's price as a dict, completed from the stored price (e.g. `tiers` when not expanded).

    Items without a price fall back to the legacy `plan`, rewritten in price terms.
    """
    raw = item.get("price")
    price_id = ref_id(raw)
    stored = as_dict(catalog.prices.get(price_id)) if price_id else {}
    if isinstance(raw, dict):
        merged = dict(stored)
        merged.update({key: value for key, value in raw.items() if value is not None or key not in stored})
        if merged.get("tiers") is None and stored.get("tiers") is not None:
            merged["tiers"] = stored["tiers"]
        return merged
    if stored:
        return stored
    plan = item.get("plan")
    if isinstance(plan, dict):
        return {
            "id": plan.get("id"),
            "currency": plan.get("currency"),
            "product": plan.get("product"),
            "billing_scheme": plan.get("billing_scheme"),
            "tiers_mode": plan.get("tiers_mode"),
            "tiers": plan.get("tiers"),
            "unit_amount": plan.get("amount"),
            "unit_amount_decimal": plan.get("amount_decimal"),
            "recurring": {
                "interval": plan.get("interval"),
                "interval_count": plan.get("interval_count"),
                "usage_type": plan.get("usage_type"),
            },
            "type": "recurring",
        }
    return None


def _tier_cap(tier: StripeObject) -> Fraction | None:
    """A tier's `up_to`; None means unbounded ("inf")."""
    up_to = tier.get("up_to")
    return None if up_to in (None, "inf") else exact(up_to)


def _tier_rate(tier: StripeObject) -> tuple[Fraction, Fraction]:
    rate = exact(tier.get("unit_amount_decimal"))
    if rate is None:
        rate = exact(tier.get("unit_amount")) or Fraction(0)
    flat = exact(tier.get("flat_amount_decimal"))
    if flat is None:
        flat = exact(tier.get("flat_amount")) or Fraction(0)
    return rate, flat


def tiered_amount(tiers: list[Any], mode: str, quantity: int) -> Fraction | None:
    """Stripe's tiered pricing for one period. None when the tiers are unusable."""
    rows = [tier for tier in tiers if isinstance(tier, dict)]
    if not rows:
        return None
    rows.sort(key=lambda tier: (_tier_cap(tier) is None, _tier_cap(tier) or 0))
    if mode == "volume":
        for tier in rows:
            cap = _tier_cap(tier)
            if cap is None or quantity <= cap:
                rate, flat = _tier_rate(tier)
                return quantity * rate + flat
        return None  # quantity above every bounded tier: not a valid price
    if mode != "graduated":
        return None
    total = Fraction(0)
    below = Fraction(0)
    for tier in rows:
        cap = _tier_cap(tier)
        top = Fraction(quantity) if cap is None else min(Fraction(quantity), cap)
        units = top - below
        if units > 0:
            rate, flat = _tier_rate(tier)
            total += units * rate + flat  # the flat amount is charged when the tier is used
        if cap is None or quantity <= cap:
            return total
        below = cap
    return None


def period_amount(price: StripeObject, quantity: int, catalog: Catalog | None = None) -> Fraction | None:
    """What one billing period of `quantity` units costs, before discounts and tax. A tiered price
    whose tiers are not known costs what an invoice charged for a full period of that quantity."""
    if price.get("billing_scheme") == "tiered":
        if price.get("tiers") is None and catalog is not None:
            return catalog.billed.get((str(price.get("id")), quantity))
        return tiered_amount(as_list(price.get("tiers")), str(price.get("tiers_mode")), quantity)
    unit = exact(price.get("unit_amount_decimal"))
    if unit is None:
        unit = exact(price.get("unit_amount"))
    if unit is None:
        return None
    return unit if quantity == 1 else unit * quantity


def tax_divisor(item: StripeObject, subscription: StripeObject, price: StripeObject) -> Fraction:
    """1 + the inclusive tax rate to back out of a tax-inclusive price (1 when nothing to back out)."""
    if price.get("tax_behavior") == "exclusive":
        return ONE
    rates = as_list(item.get("tax_rates")) or as_list(subscription.get("default_tax_rates"))
    inclusive = [as_dict(rate) for rate in rates if as_dict(rate).get("inclusive") is True]
    if not inclusive:
        return ONE
    total = sum((exact(rate.get("percentage")) or Fraction(0) for rate in inclusive), Fraction(0))
    return 1 + total / 100


def item_amount(
    item: StripeObject,
    subscription: StripeObject,
    catalog: Catalog,
    problems: list[str],
    limitations: list[str] | None = None,
) -> ItemAmount | None:
    """The item's monthly gross amount, or None when it does not count (metered, one-time, malformed)."""
    price = resolve_price(item, catalog)
    item_id = ref_id(item.get("id"))
    if price is None:
        problems.append(f"item {item_id}: no price")
        return None
    recurring = price.get("recurring")
    if not isinstance(recurring, dict) or price.get("type") == "one_time":
        return None
    if recurring.get("usage_type") == "metered":
        return None
    months = months_in_period(recurring)
    quantity = item.get("quantity", 1)
    if quantity is None:
        quantity = 1
    if months is None or not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
        problems.append(f"item {item_id}: unusable interval or quantity")
        return None
    amount = period_amount(price, quantity, catalog)
    if amount is None:
        if price.get("billing_scheme") == "tiered" and price.get("tiers") is None and limitations is not None:
            limitations.append(
                f"MRR: tiered price {ref_id(price.get('id'))} has not been billed for a full period of "
                f"{quantity} units yet and its tiers are unreadable; left out of MRR (rak_plan_read tells)"
            )
        problems.append(f"item {item_id}: unusable price {ref_id(price.get('id'))}")
        return None
    unit = period_amount(price, 1, catalog)
    if unit is None:
        # Tiers unknown and one unit never billed alone: the average unit stands in for the rank.
        unit = amount / quantity if quantity else amount
    plan = item.get("plan")
    return ItemAmount(
        item_id=item_id,
        price_id=ref_id(price.get("id")),
        plan_id=ref_id(plan) if plan is not None else ref_id(price.get("id")),
        product_id=ref_id(price.get("product")),
        lookup_key=price.get("lookup_key") if isinstance(price.get("lookup_key"), str) else None,
        nickname=price.get("nickname") if isinstance(price.get("nickname"), str) else None,
        quantity=quantity,
        months=months,
        gross=_divided(_not_negative(amount), months),
        unit_monthly=_divided(_not_negative(unit), months),
        tax_divisor=tax_divisor(item, subscription, price),
        discounts=tuple(discount for discount in as_list(item.get("discounts"))),
    )


def _divided(amount: Fraction, divisor: Fraction) -> Fraction:
    return amount if divisor is ONE else amount / divisor


def _not_negative(amount: Fraction) -> Fraction:
    # max(amount, ZERO) without Fraction's comparison (an ABC check first); a denominator is positive.
    return amount if amount.numerator >= 0 else ZERO


def coupon_of(discount: Any, catalog: Catalog) -> StripeObject | None:
    """The coupon behind a discount: `source.coupon` (id or object), else the older `coupon`."""
    if not isinstance(discount, dict):
        return None
    raw = as_dict(discount.get("source")).get("coupon")
    if raw is None:
        raw = discount.get("coupon")
    if isinstance(raw, dict):
        stored = as_dict(catalog.coupons.get(ref_id(raw) or ""))
        return {**stored, **raw}
    coupon_id = ref_id(raw)
    if coupon_id is None:
        return None
    found = catalog.coupons.get(coupon_id)
    return found if isinstance(found, dict) else {"id": coupon_id}


def discount_active(discount: Any, at: datetime) -> bool:
    if not isinstance(discount, dict) or discount.get("deleted") is True:
        return False
    start = to_time(discount.get("start"))
    end = to_time(discount.get("end"))
    return (start is None or start <= at) and (end is None or at < end)


def active_discounts(
    discounts: Any, at: datetime, problems: list[str], catalog: Catalog
) -> list[StripeObject]:
    """The discounts (objects, or ids resolved through the catalog) active at `at`."""
    found: list[StripeObject] = []
    for discount in as_list(discounts) if not isinstance(discounts, dict) else [discounts]:
        if isinstance(discount, str):
            resolved = catalog.discounts.get(discount)
            if resolved is None:
                problems.append(f"discount {discount} unknown: ignored")
                continue
            discount = resolved
        if discount_active(discount, at):
            found.append(discount)
    return found


def known_discounts(*holders: Any) -> dict[str, StripeObject]:
    """Every expanded discount object in the given subscriptions/customers, or given as such (a
    `customer.discount.*` event's object), by id; later holders win."""
    found: dict[str, StripeObject] = {}
    for holder in holders:
        holder = as_dict(holder)
        if holder.get("object") == "discount" and holder.get("deleted") is not True:
            candidates = [holder]
        else:
            candidates = as_list(holder.get("discounts")) + [holder.get("discount")]
        for raw in as_list(holder.get("items")):
            candidates.extend(as_list(as_dict(raw).get("discounts")))
        for discount in candidates:
            discount_id = ref_id(discount)
            if isinstance(discount, dict) and discount_id:
                found[discount_id] = discount
    return found


def with_known_discounts(subscription: StripeObject, known: Mapping[str, StripeObject]) -> StripeObject:
    """The subscription with each discount it (or an item) names by id replaced by the known object of
    that id; an id not in `known` stays as it is. The input is not changed."""

    def expanded(discounts: Any) -> Any:
        if not isinstance(discounts, list):
            return discounts
        return [known.get(raw, raw) if isinstance(raw, str) else raw for raw in discounts]

    result = {**subscription, "discounts": expanded(subscription.get("discounts"))}
    items = subscription.get("items")
    if isinstance(items, dict) and isinstance(items.get("data"), list):
        data = [
            {**item, "discounts": expanded(item.get("discounts"))} if isinstance(item, dict) else item
            for item in items["data"]
        ]
        result["items"] = {**items, "data": data}
    return result


def items_in_part(subscription: StripeObject) -> bool:
    """Whether the subscription lists only its first items, as an event's payload does (the sync
    pages the rest in)."""
    listed = subscription.get("items")
    return isinstance(listed, dict) and listed.get("has_more") is True


def with_stored_items(subscription: StripeObject, stored: StripeObject) -> StripeObject:
    """A subscription that lists only its first items, completed with the later items of `stored`,
    its stored version listing all of them, when `stored` lists the same first items in the same
    order. Otherwise it is returned as it is: which items were removed could not be told. The input
    is not changed."""
    listed, known = as_dict(subscription.get("items")), as_dict(stored.get("items"))
    first, every = as_list(listed), as_list(known)
    if not items_in_part(subscription) or known.get("has_more") is not False or len(every) <= len(first):
        return subscription
    if [ref_id(item) for item in first] != [ref_id(item) for item in every[: len(first)]]:
        return subscription
    return {**subscription, "items": {**listed, "data": [*first, *every[len(first) :]], "has_more": False}}


def unknown_discount_ids(subscription: StripeObject, catalog: Catalog | None = None) -> list[str]:
    """The discounts a subscription and its items name by id only (as an event's payload does) that
    the catalog does not know either."""
    listed = subscription_and_item_discounts(subscription, catalog or Catalog())
    return [raw for raw in listed if isinstance(raw, str)]


def amount_off_in(coupon: StripeObject, currency: str | None) -> Fraction | None:
    """The coupon's fixed amount in the subscription's currency (None when it has none)."""
    if currency_of(coupon.get("currency")) == currency:
        return exact(coupon.get("amount_off"))
    option = as_dict(as_dict(coupon.get("currency_options")).get(currency or ""))
    return exact(option.get("amount_off"))


def _apply(amounts: list[Fraction], coupon: StripeObject, months: Fraction, currency: str | None) -> None:
    """Take one forever coupon off `amounts` in place (percent multiplies; amount_off is per invoice)."""
    percent = exact(coupon.get("percent_off"))
    if percent is not None:
        factor = max(Fraction(0), 1 - percent / 100)
        amounts[:] = [amount * factor for amount in amounts]
        return
    off = amount_off_in(coupon, currency)
    if off is None:
        return
    monthly_off = off / months
    total = sum(amounts, Fraction(0))
    if total <= monthly_off:
        amounts[:] = [Fraction(0)] * len(amounts)
    elif total > 0:
        # Spread a subscription-wide amount over its items by their share, as Stripe prorates it.
        amounts[:] = [amount - monthly_off * amount / total for amount in amounts]


def subscription_and_item_discounts(subscription: StripeObject, catalog: Catalog) -> list[Any]:
    """The subscription's own discounts and its items', ids resolved through the catalog where it
    knows them (an unknown id is left as it is)."""
    listed = as_list(subscription.get("discounts")) + [
        discount
        for item in as_list(subscription.get("items"))
        for discount in as_list(as_dict(item).get("discounts"))
    ]
    return [catalog.discounts.get(raw, raw) if isinstance(raw, str) else raw for raw in listed]


def coupon_ids(discounts: list[StripeObject], catalog: Catalog) -> list[str]:
    ids = []
    for discount in discounts:
        coupon = coupon_of(discount, catalog)
        coupon_id = ref_id(coupon) if coupon else None
        if coupon_id:
            ids.append(coupon_id)
    return ids


def subscription_discounts(
    subscription: StripeObject,
    customer: StripeObject | None,
    at: datetime,
    problems: list[str],
    catalog: Catalog,
) -> list[StripeObject]:
    """Subscription-level discounts active at `at`; the customer's only when the subscription has none."""
    own = active_discounts(subscription.get("discounts"), at, problems, catalog)
    if own or customer is None:
        return own
    return active_discounts(customer.get("discount"), at, problems, catalog)


def subscription_amount(
    subscription: StripeObject, customer: StripeObject | None, catalog: Catalog, at: datetime
) -> SubscriptionAmount:
    """The subscription's MRR contribution as if it counts at `at` (discounts judged at `at`)."""
    problems: list[str] = []
    limitations: list[str] = []
    items = [
        amount
        for raw in as_list(subscription.get("items"))
        if isinstance(raw, dict)
        and (amount := item_amount(raw, subscription, catalog, problems, limitations)) is not None
    ]
    currency = currency_of(subscription.get("currency"))
    if currency is None:
        for raw in as_list(subscription.get("items")):
            price = resolve_price(as_dict(raw), catalog)
            currency = currency_of(as_dict(price).get("currency"))
            if currency:
                break
    amounts = [item.gross for item in items]
    for index, item in enumerate(items):
        for discount in active_discounts(list(item.discounts), at, problems, catalog):
            coupon = coupon_of(discount, catalog)
            if coupon and coupon.get("duration") == "forever":
                one = [amounts[index]]
                _apply(one, coupon, item.months, currency)
                amounts[index] = max(one[0], Fraction(0))
    if items:
        for discount in subscription_discounts(subscription, customer, at, problems, catalog):
            coupon = coupon_of(discount, catalog)
            if coupon and coupon.get("duration") == "forever":
                _apply(amounts, coupon, items[0].months, currency)
    limitations.extend(
        f"MRR: discount {discount_id} of {ref_id(subscription.get('id'))} is known by its id only (a"
        " webhook's payload) and left out of MRR (the next sync tells)"
        for discount_id in unknown_discount_ids(subscription, catalog)
    )
    if items_in_part(subscription):  # and the stored version could not complete it (`with_stored_items`)
        limitations.append(
            f"MRR: {ref_id(subscription.get('id'))} has more items than the"
            f" {len(as_list(subscription.get('items')))} a webhook's payload lists; the others are left"
            " out of MRR (the next sync tells)"
        )
    net = sum(
        (
            _divided(_not_negative(amount), item.tax_divisor)
            for amount, item in zip(amounts, items, strict=True)
        ),
        ZERO,
    )
    return SubscriptionAmount(
        currency=currency,
        mrr=round_half_up(_not_negative(net)),
        items=tuple(items),
        problems=tuple(problems),
        limitations=tuple(limitations),
    )


# The fields `subscription_amount` reads, of a subscription and of its items; the customer and the
# time only matter through which discounts are active.
AMOUNT_FIELDS = ("discounts", "currency", "default_tax_rates")
ITEM_AMOUNT_FIELDS = ("id", "price", "plan", "quantity", "discounts", "tax_rates")


class SubscriptionAmounts:
    """`subscription_amount` for one customer, remembered: the versions of a subscription that the
    history rebuilds mostly differ in fields MRR never reads, and the current one is asked for
    both now and in the history."""

    def __init__(self, customer: StripeObject | None, catalog: Catalog) -> None:
        self.customer = customer
        self.catalog = catalog
        self._known: dict[tuple[bytes, tuple[bool, ...]], SubscriptionAmount] = {}
        # The fields and discounts of each subscription version asked about, by its id(): the history
        # asks about the same version at every moment. The version is kept too, so its id() is never
        # reused.
        self._fields: dict[int, tuple[StripeObject, bytes, list[Any]]] = {}

    def __call__(self, subscription: StripeObject, at: datetime) -> SubscriptionAmount:
        kept = self._fields.get(id(subscription))
        if kept is None or kept[0] is not subscription:
            items = [
                [item.get(name) for name in ITEM_AMOUNT_FIELDS] if isinstance(item, dict) else item
                for item in as_list(subscription.get("items"))
            ]
            fields = orjson.dumps([items, *(subscription.get(name) for name in AMOUNT_FIELDS)])
            discounts = subscription_and_item_discounts(subscription, self.catalog)
            if self.customer is not None:
                discounts.append(self.customer.get("discount"))
            kept = self._fields[id(subscription)] = (subscription, fields, discounts)
        # Which discounts are active at `at` is all the time changes in the amount.
        key = (kept[1], tuple(discount_active(discount, at) for discount in kept[2]))
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = subscription_amount(subscription, self.customer, self.catalog, at)
        return found
