"""Signed Stripe webhook deliveries for tests: events in the pinned API version's shapes."""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import stripe

from stripe_vocabulary import API_VERSION

SECRET = "whsec_test_perly_current"
OLD_SECRET = "whsec_test_perly_previous"
T0 = 1_793_491_200  # 2026-11-01T00:00:00Z

_ids = itertools.count(1)


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send, computed by the stripe library itself."""
    return stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=timestamp)


def delivery(event: dict[str, Any], secret: str = SECRET, timestamp: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `client.post(path, **delivery(...))`."""
    body = orjson.dumps(event)
    header = sign(body, secret, int(time.time()) if timestamp is None else timestamp)
    return {"content": body, "headers": {"Stripe-Signature": header, "Content-Type": "application/json"}}


def event(event_type: str, obj: dict[str, Any], created: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": extra.pop("id", f"evt_test_{next(_ids):06d}"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": {
            "object": obj,
            **({"previous_attributes": extra.pop("previous")} if "previous" in extra else {}),
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        **extra,
    }


def customer(customer_id: str = "cus_A", created: int = T0 - 400 * 86400, **fields: Any) -> dict[str, Any]:
    return {
        "id": customer_id,
        "object": "customer",
        "created": created,
        "email": f"{customer_id}@example.com",
        "name": f"Customer {customer_id}",
        "currency": "usd",
        "default_source": None,
        "delinquent": False,
        "discount": None,
        "invoice_settings": {"default_payment_method": "pm_card"},
        "livemode": False,
        "metadata": {},
        **fields,
    }


def price(price_id: str = "price_pro", unit_amount: int = 5000) -> dict[str, Any]:
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": T0 - 500 * 86400,
        "currency": "usd",
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": "prod_pro",
        "recurring": {"interval": "month", "interval_count": 1, "meter": None, "usage_type": "licensed"},
        "tax_behavior": "exclusive",
        "tiers_mode": None,
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def subscription(
    sub_id: str = "sub_A",
    customer_id: str = "cus_A",
    status: str = "active",
    quantity: int = 1,
    **fields: Any,
) -> dict[str, Any]:
    start = T0 - 200 * 86400
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer_id,
        "status": status,
        "created": start,
        "start_date": start,
        "billing_cycle_anchor": start,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "currency": "usd",
        "default_payment_method": None,
        "default_source": None,
        "discounts": [],
        "ended_at": None,
        "pause_collection": None,
        "trial_start": None,
        "trial_end": None,
        "livemode": False,
        "metadata": {},
        "items": {
            "object": "list",
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={sub_id}",
            "data": [
                {
                    "id": f"si_{sub_id}",
                    "object": "subscription_item",
                    "created": start,
                    "current_period_start": T0 - 10 * 86400,
                    "current_period_end": T0 + 20 * 86400,
                    "discounts": [],
                    "metadata": {},
                    "price": price(),
                    "quantity": quantity,
                    "subscription": sub_id,
                    "tax_rates": [],
                }
            ],
        },
        **fields,
    }


def failed_charge(
    charge_id: str, customer_id: str = "cus_A", created: int = T0, amount: int = 5000
) -> dict[str, Any]:
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": 0,
        "amount_refunded": 0,
        "captured": False,
        "created": created,
        "currency": "usd",
        "customer": customer_id,
        "disputed": False,
        "failure_code": "card_declined",
        "failure_message": "Your card was declined.",
        "livemode": False,
        "metadata": {},
        "outcome": {
            "advice_code": "try_again_later",
            "network_status": "declined_by_network",
            "reason": "generic_decline",
            "seller_message": "The bank did not return any further details with this decline.",
            "type": "issuer_declined",
        },
        "paid": False,
        "payment_intent": f"pi_{charge_id}",
        "refunded": False,
        "status": "failed",
    }
