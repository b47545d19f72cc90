"""Benchmark of the source against the local Stripe emulator (a subprocess). Prints figures; asserts nothing.

1. Zero latency, no server rate limit: records/s of a full backfill of every stream, and peak memory.
2. 100 ms latency and Stripe's live limit (100 requests/s): a full backfill with a live key: requests/s
   against the ceiling, how full the list pages were, failed requests.
3. After the emulator's clock moves a day: an incremental sync: requests used vs objects changed.
0. Start-up of the CLI (`spec`), then the first sync of the 4 core streams at 100 ms latency, the live
   limit and a 90 requests/s budget: requests against the minimum (full pages only), page fill, requests
   in each second, and end to end through the CLI (start-up included) against the budget's ceiling.
   The emulator's clock starts at this machine's, as Stripe's and a real machine's agree (both on NTP
   time); `--emulator-clock book` leaves it at its book's date, whatever the machine's clock says.
4. The recommended key without events (rk_test_perly_billing, the 4 core streams), zero latency: the
   first sync, one simulated day, the reconciliation sync: its requests against the first sync's (the
   target is at most 25%), and whether its store equals a fresh full read (no change missed).

    python benchmarks/bench_source.py                    # the 50,000-customer book
    python benchmarks/bench_source.py --customers 2000   # a quick run
    python benchmarks/bench_source.py --only-reconciliation
    python benchmarks/bench_source.py --only-first-sync --first-sync-customers 1000 \
        --first-sync-customers 5000
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
from airbyte_cdk.entrypoint import AirbyteEntrypoint  # noqa: E402
from airbyte_cdk.models import SyncMode, Type  # type: ignore[attr-defined]  # noqa: E402
from airbyte_cdk.test.catalog_builder import CatalogBuilder, ConfiguredAirbyteStreamBuilder  # noqa: E402

from source_perly_stripe.client import StripeClient  # noqa: E402
from source_perly_stripe.early import make_client  # noqa: E402
from source_perly_stripe.source import SourcePerlyStripe  # noqa: E402
from source_perly_stripe.streams import ALL_STREAMS  # noqa: E402

LIVE_KEY = "sk_live_perly_demo"
BILLING_KEY = "rk_test_perly_billing"
BILLING_STREAMS = ("customers", "subscriptions", "invoices", "charges")
STRIPE_LIVE_LIMIT = 100.0


class CountingClient:
    """Wraps the real client to see every response: list pages and how full they were."""

    def __init__(self, inner: StripeClient) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.pages: Counter[str] = Counter()
        self.page_records = 0
        self.full_page_slots = 0
        self.other = 0
        self.sent_at: list[float] = []  # when each request left: its turn in the budget (retries too)
        self.answered_at: list[float] = []
        self.end_fills: Counter[int] = Counter()  # records on each window's last page, by tens
        take_turn = inner.budget.acquire

        def acquire() -> float:
            waited = take_turn()
            with self.lock:
                self.sent_at.append(time.monotonic())
            return waited

        inner.budget.acquire = acquire  # type: ignore[method-assign]

    def get(self, path: str, params: Any = ()) -> dict[str, Any]:
        body = self.inner.get(path, params)
        is_window = any(name == "created[gte]" for name, _ in params)
        with self.lock:
            self.answered_at.append(time.monotonic())
            if is_window:
                self.pages["window"] += 1
                self.page_records += len(body.get("data") or [])
                # A window's last page is partial by nature; count slots only of pages that had more.
                if body.get("has_more"):
                    self.full_page_slots += 1
                else:
                    self.end_fills[len(body.get("data") or []) // 10 * 10] += 1
            else:
                self.other += 1
        return body

    def server_now(self) -> int:
        return self.inner.server_now()


@contextmanager
def emulator(
    customers: int, latency_ms: int, rate_limit: str | None, now: str | None = None
) -> Iterator[str]:
    """`now`: the emulator's simulated clock (ISO 8601); None: its book's default, 2026-11-01."""
    command = [sys.executable, "-m", "integration_tests.stripe_emulator", "--port", "0"]
    command += ["--customers", str(customers), "--latency-ms", str(latency_ms)]
    if rate_limit:
        command += ["--rate-limit", rate_limit]
    if now:
        command += ["--now", now]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert process.stdout is not None
        first_line = json.loads(process.stdout.readline())
        url = first_line["url"]
        behind = (time.time() - first_line["now"]) / 86_400
        print(
            f"  emulator up at {url} in {time.monotonic() - started:.1f}s ({customers} customers; its "
            f"clock {behind:.1f} days behind this machine's)"
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def catalog(names: tuple[str, ...] = tuple(s.name for s in ALL_STREAMS)) -> Any:
    builder = CatalogBuilder()
    for name in names:
        builder.with_stream(
            ConfiguredAirbyteStreamBuilder().with_name(name).with_sync_mode(SyncMode.incremental)
        )
    return builder.build()


class Folded:
    """What the store keeps of a sync's records: per stream and id, a digest of the newest version
    (without the source's `updated`); tombstones remove the object."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], tuple[int, bytes | None]] = {}

    def add(self, stream: str, record: dict[str, Any]) -> None:
        updated = int(record.get("updated") or 0)
        key = (stream, record["id"])
        known = self.latest.get(key)
        if known is not None and known[0] > updated:
            return
        body = {k: v for k, v in record.items() if k != "updated"}
        digest = (
            None
            if record.get("deleted")
            else hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
        )
        self.latest[key] = (updated, digest)

    def objects(self) -> dict[tuple[str, str], bytes]:
        return {key: digest for key, (_, digest) in self.latest.items() if digest is not None}


def run_sync(
    config: Mapping[str, Any],
    state: list[Any] | None = None,
    streams: tuple[str, ...] | None = None,
    folded: Folded | None = None,
) -> dict[str, Any]:
    clients: list[CountingClient] = []

    def factory(cfg: Mapping[str, Any]) -> CountingClient:
        client = CountingClient(make_client(cfg))
        clients.append(client)
        return client

    source = SourcePerlyStripe(client_factory=factory)
    records: Counter[str] = Counter()
    states: dict[str, Any] = {}
    errors = []
    started = time.monotonic()
    cpu_started = time.process_time()
    message: Any
    chosen = catalog(streams) if streams else catalog()
    for message in source.read(logging.getLogger("bench"), config, chosen, state):
        AirbyteEntrypoint.airbyte_message_to_string(message)  # the serialisation a real run pays for
        if message.type == Type.RECORD:
            records[message.record.stream] += 1
            if folded is not None:
                folded.add(message.record.stream, message.record.data)
        elif message.type == Type.STATE:
            states[message.state.stream.stream_descriptor.name] = message.state
        elif message.type == Type.TRACE and message.trace.error is not None:
            errors.append(message.trace.error.message)
    elapsed = time.monotonic() - started
    client = clients[0]
    return {
        "elapsed": elapsed,
        "cpu": time.process_time() - cpu_started,
        "records": records,
        "state": list(states.values()),
        "errors": errors,
        "client": client,
        "stats": client.inner.stats.snapshot(),
        "started": started,
    }


def report(title: str, result: dict[str, Any], ceiling: float | None = None) -> None:
    stats = result["stats"]
    client: CountingClient = result["client"]
    total_records = sum(result["records"].values())
    requests_made = stats.get("requests", 0)
    rate = requests_made / result["elapsed"]
    print(f"\n== {title}")
    per_second = total_records / result["elapsed"]
    print(f"  time {result['elapsed']:.1f}s, records {total_records:,} ({per_second:,.0f}/s)")
    print(f"  per stream: {dict(result['records'])}")
    per_cpu_second = total_records / max(result["cpu"], 0.001)
    print(f"  source CPU time {result['cpu']:.1f}s ({per_cpu_second:,.0f} records per CPU-second)")
    line = f"  requests {requests_made:,} ({rate:.1f}/s)"
    if ceiling:
        line += f" = {100 * rate / ceiling:.0f}% of the {ceiling:.0f}/s ceiling"
    print(line)
    window_pages = client.pages["window"]
    if window_pages:
        full = client.full_page_slots
        print(
            f"  list pages {window_pages:,}: {full:,} full pages (has_more) + "
            f"{window_pages - full:,} window ends; mean fill {client.page_records / (100 * window_pages):.0%}"
        )
        print(f"  records on the window ends' pages, by tens: {dict(sorted(client.end_fills.items()))}")
    print(f"  other requests (probe, retrieves, sublists): {client.other:,}")
    print(f"  HTTP statuses: {stats.get('by_status', stats)}; retries {stats.get('retries', 0)}")
    print(f"  errors left: {len(result['errors'])} {result['errors'][:3]}")


def compare_with_emulator(url: str, result: dict[str, Any]) -> None:
    """What the emulator holds (its admin state) against what the backfill emitted, per stream. The
    emulator's counts include objects its book dates after its own now (the source reads up to the
    server's now) and, for events, every type in its 30 days."""
    held = requests.get(f"{url}/_emulator/state", timeout=60).json()["counts"]
    emitted = result["records"]
    print(
        "  emitted / held by the emulator: "
        + ", ".join(f"{n} {emitted[n]:,}/{held.get(n, 0):,}" for n in emitted)
    )


def reconciliation(customers: int, concurrency: int) -> None:
    """Phase 4: the recommended key without events, first sync then a day later a reconciliation."""
    with emulator(customers, 0, None) as url:
        config = {"api_key": BILLING_KEY, "base_url": url, "max_requests_per_second": 10_000}
        config["concurrency"] = concurrency
        kept = Folded()
        first = run_sync(config, streams=BILLING_STREAMS, folded=kept)
        report("4a. first sync, key without events (4 core streams), zero latency", first)
        advanced = requests.post(f"{url}/_emulator/advance", params={"days": 1}, timeout=600)
        print(f"\n  emulator advanced one day: {advanced.text[:200]}")
        second = run_sync(config, first["state"], streams=BILLING_STREAMS, folded=kept)
        report("4b. reconciliation sync one day later, same key", second)
        fresh_store = Folded()
        run_sync(config, streams=BILLING_STREAMS, folded=fresh_store)
    first_requests = first["stats"]["requests"]
    second_requests = second["stats"]["requests"]
    state_bytes = sum(len(json.dumps(s.stream.stream_state.__dict__)) for s in second["state"])
    mine, fresh = kept.objects(), fresh_store.objects()
    differing = sum(1 for key in mine.keys() | fresh.keys() if mine.get(key) != fresh.get(key))
    print(
        f"\n  reconciliation: {second_requests:,} requests against {first_requests:,} for the first sync "
        f"= {100 * second_requests / first_requests:.1f}% (target: at most 25%)"
    )
    print(
        f"  objects differing from a fresh full read after the reconciliation: {differing} of {len(fresh):,}"
    )
    print(f"  state after the reconciliation: {state_bytes:,} bytes for {len(second['state'])} streams")


CLI = [sys.executable, str(Path(__file__).parents[1] / "main.py")]
DESTINATION_CLI = [sys.executable, str(Path(__file__).parents[1] / "destination_perly" / "main.py")]


def cli_start_up(command: list[str], runs: int = 5) -> float:
    """The median wall time of `<command> spec`, a fresh interpreter each time."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([*command, "spec"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.monotonic() - started)
    return sorted(times)[runs // 2]


def first_sync(customers: int, latency_ms: int, budget: float, concurrency: int, clock: str) -> None:
    """Phase 0: the first sync of the 4 core streams with a full live key at the live limit. `clock`:
    "machine" starts the emulator's (frozen) clock at this machine's, as Stripe's and a real machine's
    agree (both on NTP time); "book" leaves it at its book's default date, whatever the machine's."""
    now = datetime.now(UTC).isoformat(timespec="seconds") if clock == "machine" else None
    print(
        f"\n== 0. first sync, {customers:,} customers, 4 core streams, {latency_ms} ms latency, "
        f"live limit {STRIPE_LIVE_LIMIT:.0f}/s, budget {budget:.0f}/s"
    )
    print(
        f"  CLI start-up (`spec`, median of 5): source-perly-stripe {cli_start_up(CLI):.2f}s, "
        f"destination-perly {cli_start_up(DESTINATION_CLI):.2f}s (target: at most 0.4s)"
    )
    with emulator(customers, latency_ms, "on", now) as url:
        config: dict[str, Any] = {"api_key": LIVE_KEY, "base_url": url, "max_requests_per_second": budget}
        config["concurrency"] = concurrency
        # As the CLI does after importing the CDK (source_perly_stripe/run.py): without it, full passes
        # of the garbage collector over the CDK's objects stall every thread for a tenth of a second
        # or more, which the CLI never does (in the first second: 42-73 requests sent instead of 82).
        gc.collect()
        gc.freeze()
        result = run_sync(config, streams=BILLING_STREAMS)
        minimum = sum(math.ceil(n / 100) for n in result["records"].values())
        client: CountingClient = result["client"]
        made, pages = result["stats"]["requests"], client.pages["window"]
        # Besides list pages, the probe and the sublists of invoices over 10 lines and subscriptions
        # over 20 items are requests no reading order avoids.
        least = minimum + client.other
        report("0a. in process", result, ceiling=STRIPE_LIVE_LIMIT)
        print(
            f"  list pages {pages:,} against a minimum of {minimum:,} full pages = {pages / minimum:.3f}x "
            "(target: at most 1.05x)"
        )
        print(
            f"  all requests {made:,} against the least possible {least:,} (those full pages, "
            f"{client.other:,} sublists and the probe) = {made / least:.3f}x"
        )
        # The budget governs when requests leave; their answers come a round trip later.
        for label, times in (("sent", client.sent_at), ("answered", client.answered_at)):
            seconds = Counter(int(t - result["started"]) for t in times)
            print(f"  requests {label} in each second: {[seconds[i] for i in range(max(seconds) + 1)]}")
        with tempfile.TemporaryDirectory() as folder:
            config_path, catalog_path = Path(folder, "config.json"), Path(folder, "catalog.json")
            config_path.write_text(json.dumps(config))
            catalog_path.write_text(json.dumps(_catalog_json(BILLING_STREAMS)))
            before = requests.get(f"{url}/_emulator/state", timeout=60).json()["requests"]
            started = time.monotonic()
            output = subprocess.run(
                [*CLI, "read", "--config", str(config_path), "--catalog", str(catalog_path)],
                check=True,
                stdout=subprocess.PIPE,
            ).stdout
            elapsed = time.monotonic() - started
            after = requests.get(f"{url}/_emulator/state", timeout=60).json()["requests"]
    records = output.count(b'"type":"RECORD"')
    ideal = least / budget
    print(
        f"  end to end through the CLI: {elapsed:.2f}s for {records:,} records and {after - before:,} "
        f"requests; the ceiling (the least possible {least:,} requests at {budget:.0f}/s) is "
        f"{ideal:.2f}s = {100 * ideal / elapsed:.0f}% of the ceiling (target: at least 90%)"
    )


def _catalog_json(names: tuple[str, ...]) -> dict[str, Any]:
    streams = [
        {
            "stream": {
                "name": name,
                "json_schema": {},
                "supported_sync_modes": ["full_refresh", "incremental"],
            },
            "sync_mode": "incremental",
            "destination_sync_mode": "append",
        }
        for name in names
    ]
    return {"streams": streams}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="max_requests_per_second for phase 2 (default: the source's)",
    )
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--skip-zero-latency", action="store_true")
    parser.add_argument("--skip-first-sync", action="store_true", help="leave out phase 0")
    parser.add_argument("--skip-reconciliation", action="store_true", help="leave out phase 4")
    parser.add_argument("--only-reconciliation", action="store_true", help="run phase 4 only")
    parser.add_argument("--only-first-sync", action="store_true", help="run phase 0 only")
    parser.add_argument(
        "--first-sync-customers",
        type=int,
        action="append",
        default=None,
        help="book sizes of phase 0 (repeatable; default: --customers)",
    )
    parser.add_argument(
        "--emulator-clock",
        choices=("machine", "book"),
        default="machine",
        help="phase 0: the emulator's clock starts at this machine's, like Stripe's (default), or at "
        "its book's default date (2026-11-01), days away from this machine's",
    )
    args = parser.parse_args()

    budget = args.budget or STRIPE_LIVE_LIMIT * 0.9
    for customers in [] if args.skip_first_sync else args.first_sync_customers or [args.customers]:
        first_sync(customers, args.latency_ms, budget, args.concurrency, args.emulator_clock)
    if args.only_first_sync:
        return

    if args.only_reconciliation:
        reconciliation(args.customers, args.concurrency)
        return

    if not args.skip_zero_latency:
        with emulator(args.customers, 0, None) as url:
            fast = {"api_key": LIVE_KEY, "base_url": url, "max_requests_per_second": 10_000}
            fast["concurrency"] = args.concurrency
            result = run_sync(fast)
            report("1. full backfill, zero latency, no rate limit", result)
            compare_with_emulator(url, result)
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  peak memory (RSS of the source process): {peak_mb:.0f} MB")

    with emulator(args.customers, args.latency_ms, "on") as url:
        config: dict[str, Any] = {"api_key": LIVE_KEY, "base_url": url, "concurrency": args.concurrency}
        if args.budget:
            config["max_requests_per_second"] = args.budget
        first = run_sync(config)
        report(
            f"2. full backfill, {args.latency_ms} ms latency, live limit {STRIPE_LIVE_LIMIT:.0f}/s, "
            f"budget {args.budget or 'default'}/s",
            first,
            ceiling=STRIPE_LIVE_LIMIT,
        )
        compare_with_emulator(url, first)
        advanced = requests.post(f"{url}/_emulator/advance", params={"days": 1}, timeout=600)
        print(f"\n  emulator advanced one day: {advanced.text[:300]}")
        second = run_sync(config, first["state"])
        report("3. incremental sync after one day", second, ceiling=STRIPE_LIVE_LIMIT)
        changed = sum(n for name, n in second["records"].items() if name != "events")
        backfill_requests = first["stats"].get("requests", 0)
        made = second["stats"].get("requests", 0)
        print(
            f"  changed objects emitted: {changed:,}; events: {second['records'].get('events', 0):,}; "
            f"requests: {made:,} (the full backfill took {backfill_requests:,}) = "
            f"{made / max(1, changed):.2f} per changed object (target: at most 0.5)"
        )
    if not args.skip_reconciliation:
        reconciliation(args.customers, args.concurrency)


if __name__ == "__main__":
    main()
