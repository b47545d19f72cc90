"""Builders for raw Stripe objects shaped like API version 2026-10-28.endive (fixtures3.json)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from destination_perly.health import CustomerBundle, HealthConfig, RiskPolicy, evaluate_customer
from destination_perly.health.model import CustomerEvaluation, MrrSnapshot, TierRule

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def days_ago(days: float) -> int:
    return ts(AS_OF - timedelta(days=days))


def price(
    price_id: str = "price_basic",
    amount: int | None = 1000,
    interval: str = "month",
    count: int = 1,
    currency: str = "usd",
    product: str = "prod_basic",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": price_id,
        "object": "price",
        "billing_scheme": "per_unit",
        "currency": currency,
        "product": product,
        "lookup_key": None,
        "recurring": {"interval": interval, "interval_count": count, "usage_type": "licensed", "meter": None},
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": None if amount is None else str(amount),
        **extra,
    }


def tiered_price(mode: str, tiers: list[dict[str, Any]], price_id: str = "price_tiered") -> dict[str, Any]:
    return price(price_id, amount=None, billing_scheme="tiered", tiers_mode=mode, tiers=tiers)


def tier(up_to: int | None, unit: int | None = None, flat: int | None = None) -> dict[str, Any]:
    return {
        "up_to": up_to,
        "unit_amount": unit,
        "unit_amount_decimal": None if unit is None else str(unit),
        "flat_amount": flat,
        "flat_amount_decimal": None if flat is None else str(flat),
    }


def item(the_price: dict[str, Any] | str, quantity: int | None = 1, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"si_{the_price if isinstance(the_price, str) else the_price['id']}",
        "object": "subscription_item",
        "price": the_price,
        "quantity": quantity,
        "tax_rates": [],
        "discounts": [],
        "current_period_start": days_ago(10),
        "current_period_end": days_ago(-20),
        **extra,
    }


def subscription(
    *items: dict[str, Any],
    sub_id: str = "sub_1",
    status: str = "active",
    customer: str = "cus_1",
    start: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    the_items = list(items) or [item(price())]
    currency = extra.pop("currency", None) or (
        the_items[0].get("price", {}).get("currency", "usd")
        if isinstance(the_items[0].get("price"), dict)
        else "usd"
    )
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "currency": currency,
        "created": start if start is not None else days_ago(400),
        "start_date": start if start is not None else days_ago(400),
        "ended_at": None,
        "canceled_at": None,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "discounts": [],
        "pause_collection": None,
        "trial_start": None,
        "trial_end": None,
        "items": {"object": "list", "data": the_items, "has_more": False},
        **extra,
    }


def coupon(
    coupon_id: str = "co_1",
    percent_off: float | None = None,
    amount_off: int | None = None,
    duration: str = "forever",
    currency: str | None = "usd",
) -> dict[str, Any]:
    return {
        "id": coupon_id,
        "object": "coupon",
        "percent_off": percent_off,
        "amount_off": amount_off,
        "currency": currency if amount_off is not None else None,
        "duration": duration,
        "valid": True,
    }


def discount(
    the_coupon: str | dict[str, Any] = "co_1", start: int | None = None, end: int | None = None
) -> dict[str, Any]:
    return {
        "id": f"di_{the_coupon if isinstance(the_coupon, str) else the_coupon['id']}",
        "object": "discount",
        "start": start if start is not None else days_ago(100),
        "end": end,
        "source": {"type": "coupon", "coupon": the_coupon},
    }


def tax_rate(percentage: float, inclusive: bool) -> dict[str, Any]:
    return {
        "id": f"txr_{percentage}_{inclusive}",
        "object": "tax_rate",
        "percentage": percentage,
        "inclusive": inclusive,
    }


def invoice(
    invoice_id: str = "in_1",
    status: str = "open",
    amount_remaining: int = 1000,
    due_date: int | None = None,
    finalized_at: int | None = None,
    subscription_id: str | None = "sub_1",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": "cus_1",
        "currency": "usd",
        "status": status,
        "amount_due": amount_remaining,
        "amount_remaining": amount_remaining,
        "collection_method": "charge_automatically",
        "attempted": True,
        "next_payment_attempt": days_ago(-2),
        "due_date": due_date,
        "created": finalized_at or days_ago(200),
        "status_transitions": {
            "finalized_at": finalized_at,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription_id, "metadata": None},
        },
        "lines": {"object": "list", "data": [], "has_more": False},
        **extra,
    }


def line(
    start: int,
    end: int,
    price_id: str,
    amount: int,
    quantity: int = 1,
    proration: bool = False,
    parent_type: str = "subscription_item_details",
) -> dict[str, Any]:
    """An invoice line; a proration may come from a pending invoice item (`invoice_item_details`)."""
    details: dict[str, Any] = {"subscription": "sub_1", "proration": proration}
    if parent_type == "subscription_item_details":
        details.update(subscription_item="si_1", invoice_item=None)
    else:
        details.update(invoice_item=f"ii_{start}_{price_id}")
    return {
        "id": f"il_{start}_{price_id}",
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "quantity": quantity,
        "period": {"start": start, "end": end},
        "pricing": {"type": "price_details", "price_details": {"price": price_id, "product": "prod"}},
        "parent": {"type": parent_type, parent_type: details},
    }


def paid_invoice(
    invoice_id: str, start: int, end: int, price_id: str, amount: int, quantity: int = 1
) -> dict[str, Any]:
    found = invoice(invoice_id, status="paid", amount_remaining=0, finalized_at=start)
    found["status_transitions"]["paid_at"] = start + 3600
    found["lines"]["data"] = [line(start, end, price_id, amount, quantity)]
    return found


def charge(
    charge_id: str = "ch_1",
    status: str = "failed",
    days: float = 1,
    reason: str | None = None,
    advice_code: str | None = None,
    captured: bool = False,
) -> dict[str, Any]:
    return {
        "id": charge_id,
        "object": "charge",
        "customer": "cus_1",
        "amount": 1000,
        "currency": "usd",
        "status": status,
        "captured": captured,
        "created": days_ago(days),
        "failure_code": "card_declined" if status == "failed" else None,
        "outcome": {"reason": reason, "advice_code": advice_code, "type": "issuer_declined"},
    }


def customer(**extra: Any) -> dict[str, Any]:
    return {
        "id": "cus_1",
        "object": "customer",
        "email": "ada@example.com",
        "name": "Ada",
        "created": days_ago(400),
        "currency": "usd",
        "default_source": None,
        "discount": None,
        "invoice_settings": {"default_payment_method": None},
        **extra,
    }


def event(
    event_id: str,
    created: int,
    obj: dict[str, Any],
    event_type: str = "customer.subscription.updated",
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id, "object": "event", "type": event_type, "created": created, "data": data}


def bundle(
    subscriptions: list[dict[str, Any]] | None = None,
    invoices: list[dict[str, Any]] | None = None,
    charges: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
    coupons: list[dict[str, Any]] | None = None,
    prices: list[dict[str, Any]] | None = None,
    products: list[dict[str, Any]] | None = None,
    snapshots: list[MrrSnapshot] | None = None,
    the_customer: dict[str, Any] | None = None,
) -> CustomerBundle:
    return CustomerBundle(
        customer_id="cus_1",
        customer=the_customer if the_customer is not None else customer(),
        subscriptions=subscriptions or [],
        invoices=invoices or [],
        charges=charges or [],
        events=events or [],
        coupons={found["id"]: found for found in coupons or []},
        prices={found["id"]: found for found in prices or []},
        products={found["id"]: found for found in products or []},
        snapshots=snapshots or [],
    )


def evaluate(
    the_bundle: CustomerBundle,
    as_of: datetime = AS_OF,
    policy: RiskPolicy | None = None,
    tiers: tuple[TierRule, ...] = (),
) -> CustomerEvaluation:
    config = HealthConfig(policy=policy or RiskPolicy(), tier_rules=tiers)
    return evaluate_customer(the_bundle, config, as_of)


def products_named(names: dict[str, str]) -> list[dict[str, Any]]:
    return [{"id": product_id, "object": "product", "name": name} for product_id, name in names.items()]


# A two-plan ladder several test modules share: Basic (10.00 a month) below Pro (30.00 a month).
BASIC = price("price_basic", amount=1000, product="prod_basic")
PRO = price("price_pro", amount=3000, product="prod_pro")
PRODUCTS = products_named({"prod_basic": "Basic", "prod_pro": "Pro"})
