"""A small known Perly store for the report tests: the rows a user would see after a sync.

Written through the destination's own store API (`ensure_schema`, `save_results`), so the report is
tested against the real tables on SQLite and PostgreSQL, without running the pipeline.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from destination_perly.health.model import CustomerEvaluation, CustomerHealth, MrrMovement, MrrSnapshot
from destination_perly.store.base import Store
from unit_tests.destination.builders import quiet_health

AS_OF = datetime(2026, 11, 8, tzinfo=UTC)

BLANK = quiet_health(
    "",
    AS_OF,
    created_at=datetime(2025, 1, 1, tzinfo=UTC),
    tenure_days=676,
    currency="usd",
    subscription_health="healthy",
)


def customer(customer_id: str, **fields: Any) -> CustomerHealth:
    defaults = {"email": f"{customer_id}@example.com", "name": customer_id.removeprefix("cus_").title()}
    return replace(BLANK, customer_id=customer_id, **(defaults | fields))


# Five customers: two at risk (ranked 80 then 35), one healthy, one deleted with flags, one in JPY.
CUSTOMERS = [
    customer("cus_healthy", mrr=5000, mrr_by_currency={"usd": 5000}),
    customer(
        "cus_failing",
        mrr=12000,
        mrr_by_currency={"usd": 12000},
        subscription_health="at_risk",
        payment_risk="high",
        flag_payment_failures=True,
        flag_invoice_aging=True,
        risk_score=80,
        risk_reasons=["3 failed payments in the last 30 days", "invoice 12 days past due (USD 120.00)"],
    ),
    customer(
        "cus_shrinking",
        name="<b>Shrink & Co</b>",
        mrr=2000,
        mrr_by_currency={"usd": 2000},
        flag_downgrade=True,
        flag_mrr_contraction=True,
        risk_score=35,
        risk_reasons=["moved from Pro to Basic on 2026-11-03"],
    ),
    customer("cus_gone", deleted=True, flag_payment_failures=True, risk_score=90),
    customer("cus_tokyo", currency="jpy", mrr=30000, mrr_by_currency={"jpy": 30000}),
]


def movement(customer_id: str, at: str, kind: str, delta: int, currency: str = "usd") -> MrrMovement:
    when = datetime.fromisoformat(at)
    before = max(-delta, 0)
    return MrrMovement(customer_id, when, kind, None, currency, before, before + delta, delta, "evt_test")


MOVEMENTS = [
    # In the default period (2026-10-09, 2026-11-08]
    movement("cus_healthy", "2026-11-02T10:00:00+00:00", "new", 5000),
    movement("cus_shrinking", "2026-11-03T09:00:00+00:00", "contraction", -3000),
    movement("cus_old", "2026-11-05T12:00:00+00:00", "churn", -7000),
    movement("cus_tokyo", "2026-11-06T00:00:00+00:00", "expansion", 10000, "jpy"),
    # Before the period: left out of the movements of the period.
    movement("cus_failing", "2026-09-01T00:00:00+00:00", "new", 12000),
]


def fill(store: Store) -> Store:
    store.ensure_schema()
    movements_of: dict[str, list[MrrMovement]] = {}
    for m in MOVEMENTS:
        movements_of.setdefault(m.customer_id, []).append(m)
    evaluations = [
        CustomerEvaluation(
            health=health,
            movements=movements_of.pop(health.customer_id, []),
            plan_changes=[],
            snapshot=MrrSnapshot(AS_OF, health.mrr_by_currency, "as_of"),
        )
        for health in CUSTOMERS
    ]
    # Movements of customers without a health row (churned long ago) ride on the first evaluation.
    evaluations[0].movements.extend(m for ms in movements_of.values() for m in ms)
    store.save_results(evaluations, [])
    return store


def write_store(path: Path) -> Path:
    """The known store as a SQLite file at `path`."""
    from destination_perly.store.sqlite import SqliteStore

    fill(SqliteStore(path)).close()
    return path
