"""`make demo`'s real-time step: after the syncs, the emulator's next days of events reach a real
`perly-webhooks` process as signed webhooks and change the demo's store before the final report."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from integration_tests import demo
from integration_tests.stripe_emulator import Emulator

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

DAY = 86_400
RISK = demo.PAYMENT_RISK_LEVELS
CHANGE_LINE = re.compile(
    r"(?P<customer>cus_\w+) .*payment_risk (?P<risk_before>\w+) -> (?P<risk_after>\w+), "
    r"failed payments \(30d\) (?P<failed_before>\d+) -> (?P<failed_after>\d+)"
)
# A small book whose two real-time days hold failed payments (the test says so if a book change ends that).
CUSTOMERS, SEED, SYNC_DAYS, REALTIME_DAYS = 80, 6, 7, 2


def rows(store: Path, sql: str) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as connection:
        connection.row_factory = sqlite3.Row
        found = [dict(row) for row in connection.execute(sql)]
    connection.close()
    return found


def unix(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp())


def test_given_the_demo_when_its_realtime_step_runs_then_webhooks_are_applied_and_raise_payment_risk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    with Emulator(customers=CUSTOMERS, seed=SEED) as emulator:
        code = demo.demo(
            None, None, SYNC_DAYS, top=5, realtime_days=REALTIME_DAYS, workdir=workdir, emulator=emulator
        )
        realtime_from = emulator.now - REALTIME_DAYS * DAY  # the incremental sync's as_of
        events = [e for e in emulator.objects("events") if e["created"] > realtime_from]
        failed_charges = [c for c in emulator.objects("charges") if c["status"] == "failed"]
    output = capsys.readouterr().out
    assert code == 0, output
    store = workdir / "perly.db"

    # Every event of the real-time days went through the receiver and had its health applied.
    ledger = {r["event_id"]: r for r in rows(store, "SELECT * FROM perly_webhook_events")}
    assert events, "the real-time days generated no event: pick another seed"
    assert {e["id"] for e in events} <= set(ledger)
    assert all(ledger[e["id"]]["applied_ms"] is not None for e in events)
    assert f"{len(events)} of {len(events)} events delivered" in output

    # A customer whose failed charge arrived only by webhook (after the last sync) is now at payment
    # risk, counting exactly the failed charges of its 30-day window, as the emulator holds them.
    by_webhook = {e["data"]["object"]["customer"] for e in events if e["type"] == "charge.failed"}
    assert by_webhook, "no failed payment in the real-time days: pick another seed"
    health = {r["customer_id"]: r for r in rows(store, "SELECT * FROM perly_customer_health")}
    for customer_id in by_webhook:
        row = health[customer_id]
        as_of = unix(row["as_of"])
        assert as_of > realtime_from, f"{customer_id}'s health was not recomputed by the webhook"
        window = [
            c for c in failed_charges if c["customer"] == customer_id and as_of - 30 * DAY < c["created"]
        ]
        assert row["failed_payments_30d"] == len(window), customer_id
        assert row["payment_risk"] != "none", customer_id
        assert bool(row["flag_payment_failures"]) == (len(window) >= 2), customer_id

    # The step prints, before -> after, customers whose payment health the webhooks made worse: at
    # least one of those with a failed charge by webhook, its "after" being what the store now holds.
    printed = {m["customer"]: m for m in CHANGE_LINE.finditer(output) if m["customer"] in by_webhook}
    assert printed, output
    for customer_id, line in printed.items():
        row = health[customer_id]
        assert (line["risk_after"], int(line["failed_after"])) == (
            row["payment_risk"],
            row["failed_payments_30d"],
        )
        assert int(line["failed_after"]) > int(line["failed_before"]) or RISK.index(
            line["risk_after"]
        ) > RISK.index(line["risk_before"])
    report_as_of = max(unix(r["as_of"]) for r in health.values())
    assert report_as_of > realtime_from  # the final report is read after the webhooks
    assert "receiver stopped cleanly" in output
    # The per-run signing secret is never shown: not in the demo's output, nor in the receiver's log.
    assert "whsec_" not in output
    assert "whsec_" not in (workdir / "webhooks.log").read_text()


def test_given_a_receiver_that_cannot_start_then_the_demo_step_fails_with_a_clear_message(
    tmp_path: Path,
) -> None:
    config = {"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}, "as_of": "not a time"}
    with Emulator(customers=10, seed=1) as emulator, pytest.raises(demo.RealtimeFailed) as failure:
        demo.realtime_step(emulator, tmp_path, config, days=1, timeout_s=20)
    message = str(failure.value)
    assert "perly-webhooks exited" in message
    assert "whsec_" not in message.replace("whsec_***", "")
