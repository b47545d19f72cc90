"""Prices and coupons as the four core resources show them (PERLY_CONTRACT.md section 9).

The recommended restricted key reads customers, subscriptions, invoices and charges only. It never
sees a price's tiers, a product or a coupon, but those four resources carry most of it:

- a subscription item embeds its whole price except `tiers`;
- an invoice line names its price and product, with the unit amount and the period it billed, and
  its `amount` is what a full period of a tiered price cost for that quantity;
- a discount names its coupon and ends (`end`) only when the coupon repeats; a `once` discount is
  removed as soon as an invoice used it; the invoices show, in `total_discount_amounts` (an item's
  discount: on its line's `discount_amounts`), how much it took off which amount.

What cannot be told from them (a coupon no invoice has used yet: `once` or `forever`?) is returned
as a limitation naming the permission that would settle it. Stored objects read with a fuller key
always win over these reconstructions (the engine lays them over).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

from destination_perly.health.values import StripeObject, as_dict, as_list, currency_of, ref_id, to_time

COUPON_PERMISSION = "rak_coupon_read"
# Months in a period of this many days, for prices seen only on invoice lines.
_DAYS_PER_MONTH = Fraction(36525, 1200)


def _line_price_id(line: StripeObject) -> str | None:
    details = as_dict(as_dict(line.get("pricing")).get("price_details"))
    return ref_id(details.get("price")) or ref_id(line.get("price"))


def _is_full_period_line(line: StripeObject) -> bool:
    """A subscription line billing a whole period (not a proration, not an invoice item)."""
    parent = as_dict(line.get("parent"))
    details = as_dict(parent.get("subscription_item_details"))
    return (
        parent.get("type") in (None, "subscription_item_details")
        and bool(details)
        and (details.get("proration") is not True)
    )


def recurring_of_days(days: int) -> dict[str, Any]:
    """The billing interval of a period this many days long (months rounded; 12 months a year)."""
    interval, count = _interval_of_days(days)
    return {"interval": interval, "interval_count": count}


@lru_cache(maxsize=1024)
def _interval_of_days(days: int) -> tuple[str, int]:
    # Every invoice line asks, with a handful of distinct lengths: the exact division is done once each.
    if days >= 28:
        months = max(1, round(days / _DAYS_PER_MONTH))
        if months % 12 == 0:
            return "year", months // 12
        return "month", months
    if days % 7 == 0:
        return "week", max(1, days // 7)
    return "day", max(1, days)


def prices_seen(
    holders: Iterable[Any], invoices: list[StripeObject], stored: Mapping[str, Any]
) -> dict[str, StripeObject]:
    """Every price the customer's objects show, by id: embedded in subscription items (all but the
    tiers), else rebuilt from a full-period invoice line (product, unit amount, interval), unless
    `stored` (read with a fuller key, laid over these) has it."""
    found: dict[str, StripeObject] = {}
    for invoice in invoices:
        for line in as_list(as_dict(invoice).get("lines")):
            line = as_dict(line)
            price_id = _line_price_id(line)
            if price_id is None or price_id in found or price_id in stored or not _is_full_period_line(line):
                continue
            period = as_dict(line.get("period"))
            start, end = to_time(period.get("start")), to_time(period.get("end"))
            if start is None or end is None or end <= start:
                continue
            pricing = as_dict(line.get("pricing"))
            unit = pricing.get("unit_amount_decimal")
            found[price_id] = {
                "id": price_id,
                "object": "price",
                "currency": currency_of(line.get("currency")) or currency_of(invoice.get("currency")),
                "product": ref_id(as_dict(pricing.get("price_details")).get("product")),
                "billing_scheme": "per_unit" if unit is not None else "tiered",
                "unit_amount_decimal": unit,
                "recurring": {**recurring_of_days((end - start).days), "usage_type": "licensed"},
                "type": "recurring",
            }
    for holder in holders:
        for item in as_list(as_dict(holder).get("items")):
            price = as_dict(item).get("price")
            price_id = ref_id(price)
            if isinstance(price, dict) and price_id:
                found[price_id] = price
    return found


def billed_amounts(invoices: list[StripeObject]) -> dict[tuple[str, int], Fraction]:
    """What a full period of a tiered price cost, by (price id, quantity), from invoice lines (the
    newest invoice wins). Free periods (trials) say nothing and are left out."""
    found: dict[tuple[str, int], tuple[int, Fraction]] = {}
    for invoice in invoices:
        created = as_dict(invoice).get("created")
        when = created if isinstance(created, int) else 0
        for line in as_list(as_dict(invoice).get("lines")):
            line = as_dict(line)
            if as_dict(line.get("pricing")).get("unit_amount_decimal") is not None:
                continue  # a per-unit price (most lines: told before reading the rest)
            price_id, quantity, amount = _line_price_id(line), line.get("quantity"), line.get("amount")
            if (
                price_id is None
                or not _is_full_period_line(line)
                or not isinstance(quantity, int)
                or not isinstance(amount, int)
                or amount <= 0
            ):
                continue
            key = (price_id, quantity)
            if key not in found or found[key][0] <= when:
                found[key] = (when, Fraction(amount))
    return {key: amount for key, (_, amount) in found.items()}


@dataclass
class _Evidence:
    currency: str | None = None
    repeating: bool = False
    applied: list[tuple[int, int]] = field(default_factory=list)  # (amount it applied to, amount off)


def _nicest_percent(applied: list[tuple[int, int]], step: int) -> str | None:
    """A percent, in multiples of `step` hundredths, that gives every amount off seen (rounded
    half-up from its subtotal); the smallest such, or None."""
    low, high = Fraction(1), Fraction(10001)  # in hundredths of a percent; `high` is excluded
    for subtotal, amount in applied:
        low = max(low, (amount - Fraction(1, 2)) * 10000 / subtotal)
        high = min(high, (amount + Fraction(1, 2)) * 10000 / subtotal)
    first = math.ceil(low / step) * step
    return str(Decimal(first) / 100) if first < high else None


def _terms(applied: list[tuple[int, int]], currency: str | None) -> StripeObject:
    """percent_off or amount_off that explains the amounts taken off: a whole percent first, then a
    fixed amount (every invoice lost the same, or all it had), then a percent with up to two
    decimals."""
    if not applied:
        return {}
    whole = _nicest_percent(applied, 100)
    if whole is not None:
        return {"percent_off": whole}
    # A fixed amount comes off whole, or takes all of an amount smaller than itself.
    fixed = max(amount for _, amount in applied)
    if all(amount == fixed or amount == base < fixed for base, amount in applied):
        return {"amount_off": fixed, "currency": currency}
    fine = _nicest_percent(applied, 1)
    return {"percent_off": fine} if fine is not None else {}


def _discount_amounts(invoice: StripeObject, item_of: dict[str, str | None]) -> list[tuple[str, int, int]]:
    """(discount id, amount it applied to, amount off) on one invoice. An item's discount is read on
    its item's line; a subscription's or customer's on the subtotal left after item discounts."""
    found: list[tuple[str, int, int]] = []
    item_total = 0
    for line in as_list(invoice.get("lines")):
        line = as_dict(line)
        item_id = ref_id(
            as_dict(as_dict(line.get("parent")).get("subscription_item_details")).get("subscription_item")
        )
        base = line.get("amount")
        for entry in as_list(line.get("discount_amounts")):
            discount_id, amount = ref_id(as_dict(entry).get("discount")), as_dict(entry).get("amount")
            if discount_id and item_of.get(discount_id) and item_of[discount_id] == item_id:
                if isinstance(amount, int) and isinstance(base, int):
                    found.append((discount_id, base, amount))
                    item_total += amount
    subtotal = invoice.get("subtotal")
    for entry in as_list(invoice.get("total_discount_amounts")):
        discount_id, amount = ref_id(as_dict(entry).get("discount")), as_dict(entry).get("amount")
        if (
            discount_id
            and not item_of.get(discount_id)
            and isinstance(amount, int)
            and isinstance(subtotal, int)
        ):
            found.append((discount_id, subtotal - item_total, amount))
    return found


def coupons_seen(
    discounts: Iterable[Any], invoices: list[StripeObject]
) -> tuple[dict[str, StripeObject], dict[str, str]]:
    """Coupons rebuilt from the discounts attached now (the subscriptions', their items' and the
    customer's) and the invoices they were applied to, by coupon id, with what is left unknown.

    Stripe removes a `once` discount as soon as an invoice has used it, and gives a `repeating` one
    an `end`. So a discount still attached, without an end, that an invoice has used lasts forever;
    one no invoice has used yet may be `once` or `forever`: unknown without the coupon."""
    coupon_of_discount: dict[str, str] = {}
    item_of: dict[str, str | None] = {}
    evidence: dict[str, _Evidence] = {}
    for discount in discounts:
        discount = as_dict(discount)
        coupon_id = ref_id(as_dict(discount.get("source")).get("coupon")) or ref_id(discount.get("coupon"))
        discount_id = ref_id(discount.get("id"))
        if coupon_id is None or discount_id is None:
            continue
        coupon_of_discount[discount_id] = coupon_id
        item_of[discount_id] = ref_id(discount.get("subscription_item"))
        found = evidence.setdefault(coupon_id, _Evidence())
        found.repeating = found.repeating or discount.get("end") is not None
    for invoice in invoices if evidence else ():  # (most customers have no discount to look for)
        if invoice.get("status") not in ("open", "paid"):
            continue
        for discount_id, base, amount in _discount_amounts(invoice, item_of):
            coupon_id = coupon_of_discount.get(discount_id)
            if coupon_id is None or amount <= 0 or base <= 0:
                continue
            found = evidence[coupon_id]
            found.currency = currency_of(invoice.get("currency"))
            found.applied.append((base, amount))
    coupons: dict[str, StripeObject] = {}
    limitations: dict[str, str] = {}
    for coupon_id, found in sorted(evidence.items()):
        coupon: StripeObject = {"id": coupon_id, "object": "coupon"}
        if found.repeating:
            coupon["duration"] = "repeating"
        elif found.applied:
            coupon["duration"] = "forever"
        else:
            limitations[coupon_id] = (
                f"MRR: coupon {coupon_id} has not been applied to an invoice yet, so whether it lasts "
                f"forever is unknown; it is not taken off MRR ({COUPON_PERMISSION} tells)"
            )
        terms = _terms(found.applied, found.currency)
        if not terms and coupon.get("duration") == "forever":
            limitations[coupon_id] = (
                f"MRR: how much coupon {coupon_id} takes off cannot be told from its invoices; it is not "
                f"taken off MRR ({COUPON_PERMISSION} tells)"
            )
        coupon.update(terms)
        coupons[coupon_id] = coupon
    return coupons, limitations
