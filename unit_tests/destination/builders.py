"""Small builders for Stripe-shaped records and a stand-in health engine for writer tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from destination_perly.health.model import (
    CustomerBundle,
    CustomerEvaluation,
    CustomerHealth,
    HealthConfig,
    MrrMovement,
    MrrSnapshot,
)

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
T0 = int(AS_OF.timestamp()) - 86400


def customer(cid: str, updated: int = T0, **fields: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "customer",
        "created": T0 - 1000,
        "updated": updated,
        "email": f"{cid}@x.io",
        **fields,
    }


def subscription(
    sid: str, cid: str, updated: int = T0, status: str = "active", amount: int = 1000, **fields: Any
):
    return {
        "id": sid,
        "object": "subscription",
        "customer": cid,
        "status": status,
        "created": T0 - 500,
        "updated": updated,
        "items": {"object": "list", "data": [{"id": f"si_{sid}", "price": {"unit_amount": amount}}]},
        **fields,
    }


def invoice(iid: str, cid: str, updated: int = T0, status: str = "paid", **fields: Any) -> dict[str, Any]:
    return {
        "id": iid,
        "object": "invoice",
        "customer": cid,
        "status": status,
        "created": T0,
        "updated": updated,
        **fields,
    }


def tombstone(oid: str, obj: str, updated: int, **fields: Any) -> dict[str, Any]:
    return {"id": oid, "object": obj, "deleted": True, "updated": updated, **fields}


def customer_ids(stream: str, record: dict[str, Any]) -> list[str]:
    """The mapping's job, reduced to what these tests need."""
    if stream == "customers":
        return [record["id"]]
    value = record.get("customer")
    return [value] if isinstance(value, str) else []


def quiet_health(customer_id: str, as_of: datetime, **fields: Any) -> CustomerHealth:
    """A health row with nothing in it (no MRR, no flag, no risk); `fields` set what a test needs."""
    quiet = CustomerHealth(
        customer_id=customer_id,
        email=None,
        name=None,
        created_at=None,
        tenure_days=None,
        currency=None,
        mrr=0,
        mrr_by_currency={},
        mrr_30d_ago=0,
        mrr_change_30d=0,
        plan_id=None,
        plan_tier=None,
        subscription_health="none",
        payment_risk="none",
        flag_payment_failures=False,
        flag_downgrade=False,
        flag_invoice_aging=False,
        flag_trial_expiring=False,
        flag_mrr_contraction=False,
        failed_payments_30d=0,
        failed_payments_90d=0,
        past_due_amount=0,
        max_days_past_due=0,
        trial_end=None,
        trial_converted_at=None,
        cancel_at_period_end=False,
        active_coupon_ids=[],
        risk_score=0,
        risk_reasons=[],
        as_of=as_of,
    )
    return replace(quiet, **fields)


class FakeEngine:
    """Stands in for the health engine: MRR = the sum of active subscriptions' first item amounts.

    Writer and store tests check what is stored and when, not the contract's rules (C's tests do)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime]] = []
        self.fail_for: set[str] = set()

    def __call__(self, bundle: CustomerBundle, config: HealthConfig, as_of: datetime) -> CustomerEvaluation:
        self.calls.append((bundle.customer_id, as_of))
        if bundle.customer_id in self.fail_for:
            raise ValueError("engine bug")
        mrr = sum(
            s["items"]["data"][0]["price"]["unit_amount"]
            for s in bundle.subscriptions
            if s.get("status") == "active"
        )
        health = quiet_health(
            bundle.customer_id,
            as_of,
            email=(bundle.customer or {}).get("email"),
            currency="usd" if mrr else None,
            mrr=mrr,
            mrr_by_currency={"usd": mrr} if mrr else {},
            subscription_health="healthy" if mrr else "none",
            payment_risk="low" if any(i.get("status") == "open" for i in bundle.invoices) else "none",
            deleted=bool((bundle.customer or {}).get("deleted")),
        )
        # Like the engine, only what the stored history does not hold yet is handed over.
        stored = bundle.history.movements if bundle.history else ()
        movements = (
            [MrrMovement(bundle.customer_id, as_of, "new", None, "usd", 0, mrr, mrr, "test")]
            if mrr and not stored
            else []
        )
        snapshot = MrrSnapshot(at=as_of, mrr_by_currency=dict(health.mrr_by_currency), cause="test")
        return CustomerEvaluation(health=health, movements=movements, plan_changes=[], snapshot=snapshot)
