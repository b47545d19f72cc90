"""Under a stream of events the refresher coalesces: refreshes start at most every
REFRESH_INTERVAL_SECONDS, each covering what queued meanwhile, and the health they leave equals a full
recomputation."""

from __future__ import annotations

import time
from typing import Any

import pytest

from destination_perly.config import parse_config
from destination_perly.ingest import Ingestor
from destination_perly.webhook_apply import REFRESH_INTERVAL_SECONDS
from unit_tests.webhooks.builders import T0, customer, delivery, event, failed_charge, subscription
from unit_tests.webhooks.conftest import Receiver

DAY = 86400
CUSTOMERS = 3


def trickle() -> list[dict[str, Any]]:
    """Sign-ups and subscriptions, then failed charges taking turns between the customers."""
    events = []
    for n in range(CUSTOMERS):
        events += [
            event("customer.created", customer(f"cus_{n}"), T0 - 30 * DAY),
            event("customer.subscription.created", subscription(f"sub_{n}", f"cus_{n}"), T0 - 20 * DAY),
        ]
    for k in range(12):
        created = T0 - (12 - k) * DAY
        events.append(
            event("charge.failed", failed_charge(f"ch_{k}", f"cus_{k % CUSTOMERS}", created=created), created)
        )
    return events


def every_row(receiver: Receiver) -> dict[str, list[dict[str, Any]]]:
    return {
        table: receiver.rows(f"SELECT * FROM {table} ORDER BY customer_id, {order}")
        for table, order in (
            ("perly_customer_health", "customer_id"),
            ("perly_mrr_movements", "at, kind"),
            ("perly_plan_changes", "at, kind"),
            ("perly_mrr_snapshots", "at"),
        )
    }


def test_given_events_trickling_in_then_refreshes_are_spaced_and_leave_what_a_full_refresh_computes(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[float] = []
    refresh = Ingestor.refresh

    def spy(self: Ingestor, customer_ids: Any, as_of: Any) -> Any:
        starts.append(time.monotonic())
        return refresh(self, customer_ids, as_of)

    monkeypatch.setattr(Ingestor, "refresh", spy)
    events = trickle()
    for each in events:  # each answered (stored) before the next is sent, as a steady trickle
        assert receiver.post(delivery(each)).status_code == 200
        time.sleep(0.005)
    receiver.wait()
    monkeypatch.setattr(Ingestor, "refresh", refresh)

    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= REFRESH_INTERVAL_SECONDS
    assert len(starts) < len(events)  # one refresh covered several events
    applied = receiver.rows("SELECT COUNT(*) AS n FROM perly_webhook_events WHERE applied_ms IS NOT NULL")
    assert applied == [{"n": len(events)}]

    left = every_row(receiver)
    assert len(left["perly_customer_health"]) == CUSTOMERS
    assert all(row["failed_payments_30d"] == 4 for row in left["perly_customer_health"])
    Ingestor(receiver.store, parse_config(receiver.config).health).refresh(
        [f"cus_{n}" for n in range(CUSTOMERS)], receiver.clock()
    )
    assert every_row(receiver) == left
