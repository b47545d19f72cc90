"""`make demo`: churn risk from Stripe billing data, end to end, on the local Stripe emulator.

Starts the emulator with its default seeded book, runs a full sync (`source-perly-stripe read` piped
into `destination-perly write`, SQLite store var/demo/perly.db), advances the emulator's clock, runs an
incremental sync from the state the destination acknowledged, then shows the real-time path: a
`perly-webhooks` receiver on the same store gets the emulator's next day of events as signed webhooks.
Finally it prints the summary and the ranked at-risk customers and writes var/perly-report.html.

The syncs run through the installed `perly` command's pipeline (perly_runner.pipeline), the one
way to run source into destination that `perly sync` and the end-to-end tests use too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from destination_perly.private_files import write_private
from perly_runner.pipeline import (
    SyncFailed,
    configured_catalog,
    discover,
    executable,
    print_progress,
    run_sync,
    write_json,
)

if TYPE_CHECKING:
    from integration_tests.stripe_emulator import Emulator

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
DEMO_KEY = "sk_test_perly_demo"  # the emulator's built-in test secret key: not a real Stripe key
WEBHOOKS_SCRIPT = "perly-webhooks"


class RealtimeFailed(SyncFailed):
    """The webhook step could not start the receiver or get every event applied in time."""


def emulator_source_config(url: str) -> dict[str, Any]:
    """Source config for the local emulator: its URL, the demo key, and a request budget above the
    test-mode default (sized for the real Stripe), since the emulator is on this machine."""
    return {"api_key": DEMO_KEY, "base_url": url, "max_requests_per_second": 200}


# The emulator's plan ladder, lowest first. Its per-seat Pro is cheaper per unit than the one-seat
# Starter, so ranking plans by unit price (Perly's default without a map) would read an upgrade from
# Starter to Pro as a downgrade: like a real account with per-seat plans, the demo maps its tiers.
LADDER = ("starter", "pro", "business", "enterprise")


def plan_tiers(products: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The destination's `plan_tiers` for the emulator's products (by product id, ranked by LADDER)."""
    tiers = []
    for product in products:
        name = (product.get("metadata") or {}).get("tier") or product.get("name", "").lower()
        if name in LADDER:
            tiers.append({"match": product["id"], "tier": product["name"], "rank": LADDER.index(name) + 1})
    return tiers


def iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------
# The real-time path: Stripe webhooks -> perly-webhooks -> the same store

PAYMENT_RISK_LEVELS = ("none", "low", "medium", "high", "critical")
FAILED_PAYMENT_EVENTS = frozenset({"charge.failed", "invoice.payment_failed"})


@dataclass
class HealthChange:
    customer_id: str
    name: str | None
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass
class RealtimeResult:
    url: str
    events_generated: int
    delivered: int  # events the receiver answered 2xx (applied, duplicate or ignored)
    applied: int
    seconds: float  # from the clock advance until every delivered event was applied
    latencies_ms: list[int]  # per event: received by the receiver -> its customers' health recomputed
    failed_payment_customers: set[str]  # customers with a failed-payment event among those delivered
    raised: list[HealthChange]  # of those, the ones whose payment health got worse (payment_raised)
    stopped_cleanly: bool = True

    @property
    def median_latency_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_snapshot(store: Path) -> dict[str, dict[str, Any]]:
    """Every customer's health row, read-only (the receiver keeps writing meanwhile)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM perly_customer_health").fetchall()
    connection.close()
    return {str(row["customer_id"]): dict(row) for row in rows}


def payment_raised(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Worse payment health: a higher payment_risk, the payment-failures flag raised, or more failures."""

    def rank(row: dict[str, Any] | None) -> int:
        level = (row or {}).get("payment_risk") or "none"
        return PAYMENT_RISK_LEVELS.index(level) if level in PAYMENT_RISK_LEVELS else 0

    def number(row: dict[str, Any] | None, column: str) -> int:
        return int((row or {}).get(column) or 0)

    return (
        rank(after) > rank(before)
        or number(after, "flag_payment_failures") > number(before, "flag_payment_failures")
        or number(after, "failed_payments_30d") > number(before, "failed_payments_30d")
    )


def _receiver_log_tail(log_path: Path, secret: str, lines: int = 5) -> str:
    text = log_path.read_text(errors="replace").replace(secret, "whsec_***") if log_path.exists() else ""
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(no output)"


def start_receiver(config_path: Path, log_path: Path, secret: str, timeout_s: float) -> tuple[Any, str]:
    """`perly-webhooks` on a free 127.0.0.1 port; returns (process, base url) once /healthz answers."""
    port = free_port()
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [executable(WEBHOOKS_SCRIPT), "--config", str(config_path), "--port", str(port)]
        + ["--log-level", "warning"],
        env={**os.environ, "PERLY_WEBHOOK_SECRETS": secret},  # the environment only: never on argv
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()  # the child holds its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RealtimeFailed(
                f"perly-webhooks exited with {process.returncode} at start: "
                f"{_receiver_log_tail(log_path, secret)}"
            )
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop_receiver(process)
    raise RealtimeFailed(
        f"perly-webhooks did not answer /healthz within {timeout_s:.0f}s: "
        f"{_receiver_log_tail(log_path, secret)}"
    )


def stop_receiver(process: Any, timeout_s: float = 15.0) -> bool:
    """SIGTERM (uvicorn drains and the processor finishes its queue); kill if it hangs. True if clean."""
    if process.poll() is not None:
        return bool(process.returncode == 0)
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def wait_until_applied(emulator: Emulator, url: str, event_count: int, timeout_s: float) -> dict[str, Any]:
    """Until the emulator has delivered every event and the receiver has refreshed health for all of
    them; returns the receiver's /healthz counters. Raises RealtimeFailed when the time is up."""
    deadline = time.monotonic() + timeout_s
    sender = emulator.webhooks
    assert sender is not None
    if not sender.wait_idle(timeout_s):
        raise RealtimeFailed(
            f"the emulator had not delivered its {event_count} webhooks after {timeout_s:.0f}s "
            f"({len(sender.log)} attempts so far)"
        )
    last = {e["event"]: e["status"] for e in sender.log}  # the final attempt per event
    rejected = Counter(str(status) for status in last.values() if not str(status).startswith("2"))
    if rejected:
        raise RealtimeFailed(f"perly-webhooks refused {sum(rejected.values())} events: {dict(rejected)}")
    while True:
        counters: dict[str, Any] = requests.get(f"{url}/healthz", timeout=2).json()
        if counters.get("write_failed") or counters.get("refresh_failed"):
            raise RealtimeFailed(f"perly-webhooks could not apply every event: {counters}")
        if counters.get("in_progress") == 0 and counters.get("applied") == counters.get("accepted"):
            return counters
        if time.monotonic() > deadline:
            raise RealtimeFailed(
                f"perly-webhooks had not applied every event after {timeout_s:.0f}s: {counters}"
            )
        time.sleep(0.05)


def realtime_step(
    emulator: Emulator,
    workdir: Path,
    destination_config: dict[str, Any],
    days: float = 1,
    timeout_s: float = 60.0,
) -> RealtimeResult:
    """Run `perly-webhooks` on the sync's store and config, let the emulator deliver `days` of events
    to it as signed webhooks, wait until all are applied, and say what changed."""
    store = Path(destination_config["store"]["path"])
    config_path = write_json(workdir / "webhooks_config.json", destination_config)
    secret = "whsec_" + secrets.token_hex(24)  # per run; it lives only in this process and the child's env
    process, url = start_receiver(config_path, workdir / "webhooks.log", secret, timeout_s=30)
    try:
        before = health_snapshot(store)
        emulator.configure_webhooks(f"{url}/webhooks/stripe", secret)
        started = time.monotonic()
        advanced = emulator.advance(days=days)
        event_ids = set(advanced["event_ids"])
        counters = wait_until_applied(emulator, url, len(event_ids), timeout_s)
        seconds = time.monotonic() - started
        attempts = emulator_log_entries(emulator)  # read before delivery is switched off below
    except requests.RequestException as error:
        raise RealtimeFailed(
            f"perly-webhooks stopped answering ({type(error).__name__}); its log: "
            f"{_receiver_log_tail(workdir / 'webhooks.log', secret)}"
        ) from None
    except RealtimeFailed as error:
        tail = _receiver_log_tail(workdir / "webhooks.log", secret)
        raise RealtimeFailed(f"{error}; its log: {tail}") from None
    except sqlite3.Error as error:
        raise RealtimeFailed(f"could not read the store {store}: {error}") from None
    finally:
        emulator.configure_webhooks(None, "")  # no more deliveries to a receiver about to stop
        clean = stop_receiver(process)

    after = health_snapshot(store)
    delivered = {e["event"] for e in attempts if str(e["status"]).startswith("2")} & event_ids
    failed_payment_customers = {
        str(event["data"]["object"].get("customer"))
        for event in emulator.objects("events")
        if event["id"] in delivered and event["type"] in FAILED_PAYMENT_EVENTS
    }
    raised = [
        HealthChange(cid, after[cid].get("name"), before.get(cid, {}), after[cid])
        for cid in sorted(failed_payment_customers)
        if cid in after and payment_raised(before.get(cid), after[cid])
    ]
    return RealtimeResult(
        url=url,
        events_generated=len(event_ids),
        delivered=len(delivered),
        applied=int(counters.get("applied", 0)),
        seconds=seconds,
        latencies_ms=ledger_latencies(store, delivered),
        failed_payment_customers=failed_payment_customers,
        raised=raised,
        stopped_cleanly=clean,
    )


def emulator_log_entries(emulator: Emulator) -> list[dict[str, Any]]:
    return list(emulator.webhooks.log) if emulator.webhooks is not None else []


def ledger_latencies(store: Path, event_ids: set[str]) -> list[int]:
    """Per event, received -> applied in ms, from the receiver's ledger (perly_webhook_events)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute(
            "SELECT event_id, applied_ms - received_ms FROM perly_webhook_events WHERE applied_ms IS NOT NULL"
        ).fetchall()
    connection.close()
    return [int(ms) for event_id, ms in rows if event_id in event_ids]


def describe_change(change: HealthChange) -> str:
    def flag(row: dict[str, Any]) -> str:
        return "yes" if row.get("flag_payment_failures") else "no"

    b, a = change.before, change.after
    name = (change.name or "")[:24]
    return (
        f"{change.customer_id}  {name:<24}  payment_risk {b.get('payment_risk') or 'none'} -> "
        f"{a.get('payment_risk')}, failed payments (30d) {b.get('failed_payments_30d') or 0} -> "
        f"{a.get('failed_payments_30d')}, payment-failures flag {flag(b)} -> {flag(a)}"
    )


def print_realtime(result: RealtimeResult, emulator_now: int, shown: int = 5) -> None:
    print(
        f"   receiver at {result.url} (signing secret generated for this run); emulator clock advanced to "
        f"{iso(emulator_now)}"
    )
    skipped = result.delivered - result.applied
    print(
        f"   {result.delivered} of {result.events_generated} events delivered; {result.applied} applied "
        f"({skipped} ignored or duplicate), all within {result.seconds:.1f}s of the clock advance"
    )
    median = result.median_latency_ms
    if median is not None:
        worst = max(result.latencies_ms)
        print(f"   received -> customer health recomputed: median {median:.0f} ms, slowest {worst} ms")
    print(
        f"   {len(result.failed_payment_customers)} customer(s) with a failed payment by webhook; "
        f"payment risk or failures raised for {len(result.raised)}" + (":" if result.raised else "")
    )
    for change in result.raised[:shown]:
        print(f"     {describe_change(change)}")
    if len(result.raised) > shown:
        print(f"     ... and {len(result.raised) - shown} more")
    print(f"   receiver {'stopped cleanly' if result.stopped_cleanly else 'killed: it did not stop in time'}")


# ---------------------------------------------------------------------------------------------------
# The demo


def demo(
    customers: int | None,
    seed: int | None,
    advance_days: int,
    top: int,
    realtime_days: float = 1,
    workdir: Path | None = None,
    emulator: Emulator | None = None,
) -> int:
    """The whole demo. `workdir` (default var/demo) holds the store, state and logs; a started
    `emulator` may be passed in (tests keep it to check the store against), else one is started."""
    from destination_perly.report import (
        backtest_rows,
        default_backtest,
        open_report_store,
        read_report,
        render_at_risk,
        render_html,
        render_summary,
    )
    from integration_tests.stripe_emulator import Emulator

    VAR.mkdir(exist_ok=True)
    # The demo keeps its own store, so it never touches a real one at var/perly.db.
    workdir = workdir or VAR / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    store, state_path = workdir / "perly.db", workdir / "state.json"
    for stale in (store, Path(f"{store}-wal"), Path(f"{store}-shm"), state_path):
        stale.unlink(missing_ok=True)  # each demo starts from a fresh book and an empty store

    options: dict[str, Any] = {k: v for k, v in (("customers", customers), ("seed", seed)) if v is not None}
    with contextlib.ExitStack() as stack:
        if emulator is None:
            emulator = stack.enter_context(Emulator(**options))
        print(f"Stripe emulator at {emulator.url}, simulated now {iso(emulator.now)}")
        source_config = emulator_source_config(emulator.url)
        write_json(workdir / "source_config.json", source_config)
        catalog = configured_catalog(discover(workdir / "source_config.json"))
        print(f"Streams: {', '.join(s['stream']['name'] for s in catalog['streams'])}")

        first_as_of = iso(emulator.now)
        destination_config = {
            "store": {"store_type": "sqlite", "path": str(store)},
            "plan_tiers": plan_tiers(emulator.objects("products")),
            "as_of": first_as_of,
        }
        print("\n1. Full sync (source read | destination write)")
        full = run_sync(workdir, source_config, destination_config, catalog, state_path, print_progress)
        print(
            f"   {full.total:,} records in {full.seconds:.1f}s, {full.states_acknowledged} states committed"
        )

        emulator.advance(days=advance_days)
        print(f"\n2. Emulator clock advanced {advance_days} days to {iso(emulator.now)}")
        destination_config["as_of"] = iso(emulator.now)
        print("\n3. Incremental sync from the committed state")
        incremental = run_sync(
            workdir, source_config, destination_config, catalog, state_path, print_progress
        )
        print(f"   {incremental.total:,} records in {incremental.seconds:.1f}s")

        if realtime_days > 0:
            unit = "day" if realtime_days == 1 else "days"
            print(
                f"\n4. Real time: perly-webhooks on the same store gets the next {realtime_days:g} {unit} "
                "of events as signed webhooks"
            )
            step_started = time.monotonic()
            realtime = realtime_step(emulator, workdir, destination_config, realtime_days)
            print_realtime(realtime, emulator.now)
            print(f"   step took {time.monotonic() - step_started:.1f}s (receiver start and stop included)")

    with open_report_store(db=store) as opened:
        report = read_report(opened.query, period_start=datetime.fromisoformat(first_as_of))
        report.backtest = default_backtest(opened)
    print("\n" + render_summary(report) + "\n")
    print(render_at_risk(report, top))
    # The default run writes var/perly-report.html (where the README points); another workdir keeps its own.
    html = VAR / "perly-report.html" if workdir == VAR / "demo" else workdir / "perly-report.html"
    write_private(html, render_html(report).encode())  # the page lists every at-risk customer
    print(f"\nStore: {_shown(store)}   HTML report: {_shown(html)}")
    # The exact command that prints this report again: the same time, period and list length.
    as_of = report.as_of.isoformat().replace("+00:00", "Z") if report.as_of else first_as_of
    print(
        f"Report again any time: perly-report --db {_shown(store)} --as-of {as_of} --since {first_as_of} "
        f"--top {top} --html {_shown(html)}"
    )
    if report.backtest is not None:
        print(f"\nBacktest of the risk score on this store (perly-report --db {_shown(store)} --backtest):")
        for label, value in backtest_rows(report.backtest):
            print(f"  {label}: {value}")
    return 0


def _shown(path: Path) -> str:
    """Relative to the repository when inside it (shorter to read and to copy)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integration_tests.demo",
        description=__doc__.splitlines()[0],
        epilog="For a real account, use the installed command: perly sync --help",
    )
    parser.add_argument("--customers", type=int, help="size of the emulated book (default: the emulator's)")
    parser.add_argument("--seed", type=int, help="seed of the emulated book (default: the emulator's)")
    parser.add_argument("--days", type=int, default=7, help="how far to advance the clock (default 7)")
    parser.add_argument(
        "--realtime-days",
        type=float,
        default=1,
        help="days of events delivered as webhooks after the syncs (default 1; 0 skips the step)",
    )
    parser.add_argument("--top", type=int, default=15, help="at-risk customers to print (default 15)")
    args = parser.parse_args(argv)
    try:
        return demo(args.customers, args.seed, args.days, args.top, args.realtime_days)
    except SyncFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
