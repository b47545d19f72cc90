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


# Nine customers. Listed at risk (not churned, score above 0), in this order: cus_failing (80); then,
# tied at 35, cus_paris (EUR, grouped before USD whatever the amounts), cus_cancelling (USD 90.00) and
# cus_shrinking (USD 20.00). Not listed: cus_healthy and cus_tokyo (score 0), cus_lost (churned in the
# period: win-back), cus_long_gone (churned before the period), cus_gone (deleted).
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
    customer(
        "cus_cancelling",
        mrr=9000,
        mrr_by_currency={"usd": 9000},
        cancel_at_period_end=True,
        risk_score=35,
        risk_reasons=["cancels on 2026-11-30 (cancel_at_period_end)"],
    ),
    customer(
        "cus_paris",
        currency="eur",
        mrr=1000,
        mrr_by_currency={"eur": 1000},
        subscription_health="at_risk",
        payment_risk="medium",
        risk_score=35,
        risk_reasons=["1 failed charge in 30 days, last: card_declined"],
    ),
    customer("cus_gone", deleted=True, flag_payment_failures=True, risk_score=90),
    customer("cus_tokyo", currency="jpy", mrr=30000, mrr_by_currency={"jpy": 30000}),
    # Churned: never in the at-risk list, even with a flag and a score left over.
    customer(
        "cus_lost",
        mrr=0,
        mrr_by_currency={},
        subscription_health="churned",
        flag_payment_failures=True,
        risk_score=30,
    ),
    customer("cus_long_gone", mrr=0, mrr_by_currency={}, subscription_health="churned"),
]
AT_RISK = ["cus_failing", "cus_paris", "cus_cancelling", "cus_shrinking"]
# The Stripe mode of each stored customer (the Dashboard link's path); one live-mode customer.
LIVEMODE = {c.customer_id: c.customer_id == "cus_failing" for c in CUSTOMERS}


def movement(
    customer_id: str, at: str, kind: str, delta: int, currency: str = "usd", churn_type: str | None = None
) -> MrrMovement:
    when = datetime.fromisoformat(at)
    before = max(-delta, 0)
    return MrrMovement(
        customer_id, when, kind, churn_type, currency, before, before + delta, delta, "evt_test"
    )


MOVEMENTS = [
    # In the default period (2026-10-09, 2026-11-08]
    movement("cus_healthy", "2026-11-02T10:00:00+00:00", "new", 5000),
    movement("cus_shrinking", "2026-11-03T09:00:00+00:00", "contraction", -3000),
    movement("cus_old", "2026-11-05T12:00:00+00:00", "churn", -7000),
    movement("cus_tokyo", "2026-11-06T00:00:00+00:00", "expansion", 10000, "jpy"),
    movement("cus_lost", "2026-11-07T08:00:00+00:00", "churn", -4000, churn_type="involuntary"),
    # Before the period: left out of the movements of the period.
    movement("cus_failing", "2026-09-01T00:00:00+00:00", "new", 12000),
    movement("cus_long_gone", "2026-09-20T00:00:00+00:00", "churn", -2500),
]


def fill(store: Store, customers: list[CustomerHealth] = CUSTOMERS) -> Store:
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
        for health in customers
    ]
    # Movements of customers without a health row (churned long ago) ride on the first evaluation.
    evaluations[0].movements.extend(m for ms in movements_of.values() for m in ms)
    store.save_results(evaluations, [])
    store.upsert_records(
        "customers",
        [
            {
                "id": c.customer_id,
                "object": "customer",
                "created": 1735689600,
                "livemode": LIVEMODE.get(c.customer_id, False),
            }
            | {"email": c.email, "name": c.name}
            for c in customers
        ],
    )
    return store


def write_store(path: Path, customers: list[CustomerHealth] = CUSTOMERS) -> Path:
    """The known store (or these customers with its movements) as a SQLite file at `path`."""
    from destination_perly.store.sqlite import SqliteStore

    fill(SqliteStore(path), customers).close()
    return path
