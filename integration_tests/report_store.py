"""A small hand-written Perly store for the report tests: the rows a user would see after a sync.

The tables follow docs/DESIGN.md (the fields of CustomerHealth and MrrMovement; lists and maps as
JSON text, booleans as 0/1, times as ISO text), so the report is tested without the pipeline.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

AS_OF = "2026-11-08T00:00:00+00:00"

HEALTH_COLUMNS = (
    "customer_id email name currency mrr mrr_by_currency subscription_health payment_risk "
    "flag_payment_failures flag_downgrade flag_invoice_aging flag_trial_expiring flag_mrr_contraction "
    "risk_score risk_reasons as_of deleted"
).split()


def customer(customer_id: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "customer_id": customer_id,
        "email": f"{customer_id}@example.com",
        "name": customer_id.replace("cus_", "").title(),
        "currency": "usd",
        "mrr": 0,
        "mrr_by_currency": {},
        "subscription_health": "healthy",
        "payment_risk": "none",
        "risk_score": 0,
        "risk_reasons": [],
        "as_of": AS_OF,
        "deleted": False,
    }
    row.update({flag: False for flag in HEALTH_COLUMNS if flag.startswith("flag_")})
    row.update(fields)
    return row


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

MOVEMENTS = [
    # In the period (2026-10-09, 2026-11-08]
    {"customer_id": "cus_healthy", "at": "2026-11-02T10:00:00+00:00", "kind": "new", "delta": 5000},
    {
        "customer_id": "cus_shrinking",
        "at": "2026-11-03T09:00:00+00:00",
        "kind": "contraction",
        "delta": -3000,
    },
    {"customer_id": "cus_old", "at": "2026-11-05T12:00:00+00:00", "kind": "churn", "delta": -7000},
    {"customer_id": "cus_tokyo", "at": "2026-11-06T00:00:00+00:00", "kind": "expansion", "delta": 10000},
    # Before the period: left out of the movements of the period.
    {"customer_id": "cus_failing", "at": "2026-09-01T00:00:00+00:00", "kind": "new", "delta": 12000},
]
CURRENCY = {"cus_tokyo": "jpy"}


def write_store(path: Path, customers: list[dict[str, Any]] = CUSTOMERS) -> Path:
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE perly_customer_health ({', '.join(HEALTH_COLUMNS)})")
    db.execute(
        "CREATE TABLE perly_mrr_movements (customer_id, at, kind, churn_type, currency, mrr_before, "
        "mrr_after, delta, cause)"
    )
    for row in customers:
        values = [
            json.dumps(v) if isinstance(v, dict | list) else int(v) if isinstance(v, bool) else v
            for v in (row[c] for c in HEALTH_COLUMNS)
        ]
        db.execute(f"INSERT INTO perly_customer_health VALUES ({', '.join('?' * len(values))})", values)
    for m in MOVEMENTS:
        db.execute(
            "INSERT INTO perly_mrr_movements VALUES (?, ?, ?, NULL, ?, 0, 0, ?, 'evt_test')",
            (m["customer_id"], m["at"], m["kind"], CURRENCY.get(m["customer_id"], "usd"), m["delta"]),
        )
    db.commit()
    db.close()
    return path
