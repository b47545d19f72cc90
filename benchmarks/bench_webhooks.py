"""Webhook burst benchmark: N signed events POSTed to a real `perly-webhooks` (uvicorn) on 127.0.0.1.

Prints, each against the issue-13 target: events/s applied (stored and health refreshed), and per
event the time from POST to its answer and from POST to updated health (the ledger's applied time),
p50/p95/p99; then the CPU the receiver and this client used per event, so a figure bounded by the
client sharing the machine's cores shows as such; then, per receiver process, how many of the
connections it accepted and the CPU it used (with `--workers 2`, the kernel may give one of them all
the connections).

    python benchmarks/bench_webhooks.py --events 2000 --customers 200 --concurrency 8
    python benchmarks/bench_webhooks.py --postgres "$PERLY_TEST_POSTGRES_DSN" --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from destination_perly.config import open_store, parse_config  # noqa: E402
from integration_tests.demo import start_receiver, stop_receiver  # noqa: E402
from integration_tests.postgres import store_settings  # noqa: E402
from unit_tests.webhooks.builders import SECRET, T0, customer, event, failed_charge, sign, subscription  # noqa: E402

DAY = 86400
PATH = "/webhooks/stripe"
# Issue 13's targets for the receiver.
TARGET_EVENTS_PER_S = 1000
TARGET_P99_MS = 250


def burst(events: int, customers: int) -> list[dict[str, Any]]:
    """Per customer: sign-up, subscription, then failed and retried charges, until N events."""
    out: list[dict[str, Any]] = []
    for n in range(customers):
        cus = f"cus_b{n}"
        out += [
            event("customer.created", customer(cus), T0 - 30 * DAY),
            event("customer.subscription.created", subscription(f"sub_b{n}", cus), T0 - 20 * DAY + n),
        ]
    charge = 0
    while len(out) < events:
        n = charge % customers
        charge += 1
        out.append(
            event(
                "charge.failed", failed_charge(f"ch_b{charge}", f"cus_b{n}", created=T0 - charge), T0 - charge
            )
        )
    return out[:events]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def store_config(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    if not args.postgres:
        return {
            "store": {"store_type": "sqlite", "path": str(tmp / "perly.db")},
            "as_of": "2026-11-01T00:00:00Z",
        }
    return {
        "store": store_settings(args.postgres, f"perly_bench_{uuid.uuid4().hex[:8]}"),
        "as_of": "2026-11-01T00:00:00Z",
    }


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its threads and its descendants (uvicorn's workers), Linux."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def receiver_processes(pid: int) -> list[int]:
    """The processes that serve requests: uvicorn's worker processes, or `pid` itself with one."""
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    workers = [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]
    return workers or [pid]


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections to `port` each process holds (Linux /proc): the kernel, not
    the receiver, decides which worker process accepts a connection."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                established.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        counts[pid] = sum(1 for fd in fds.iterdir() if _link(fd) in established)
    return counts


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""


def store_server_cpu_seconds(config: dict[str, Any]) -> float:
    """CPU of the PostgreSQL backends serving the receiver's connections (same machine); 0 for SQLite."""
    if config["store"]["store_type"] != "postgres":
        return 0.0
    store = open_store(parse_config(config).store)
    try:
        rows = store.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ? AND pid <> pg_backend_pid()",
            ("destination-perly",),
        )
    finally:
        store.close()
    return sum(tree_cpu_seconds(int(row["pid"])) for row in rows)


async def post_all(
    url: str, events: list[dict[str, Any]], concurrency: int, on_connected: Callable[[], None]
) -> dict[str, tuple[float, float]]:
    """event id -> (POST sent, answer received), wall clock seconds. A bare HTTP/1.1 client on
    keep-alive connections: httpx costs about 1.4 ms of CPU per request, more than the receiver's own
    work, on the same cores."""
    bodies = [(e["id"], orjson.dumps(e)) for e in events]
    timings: dict[str, tuple[float, float]] = {}
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    parts = urlsplit(url)
    host = (parts.hostname or "127.0.0.1").encode()

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not queue.empty():
                event_id, body = queue.get_nowait()
                sent = time.time()
                signature = sign(body, SECRET, int(sent)).encode()
                writer.write(
                    b"POST "
                    + PATH.encode()
                    + b" HTTP/1.1\r\nHost: "
                    + host
                    + b"\r\nContent-Type: application/json\r\nStripe-Signature: "
                    + signature
                    + b"\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                answer = await reader.readexactly(length)
                if status != b"200":
                    raise SystemExit(f"POST {event_id}: {status.decode()} {answer.decode(errors='replace')}")
                timings[event_id] = (sent, time.time())
        finally:
            writer.close()

    connections = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(concurrency)]
    await asyncio.sleep(0.05)  # accepted by then
    on_connected()
    await asyncio.gather(*(worker(reader, writer) for reader, writer in connections))
    return timings


def wait_all_applied(config: dict[str, Any], events: int, timeout_s: float = 120) -> None:
    """Until the ledger shows every event applied (whichever worker process stored it)."""
    store = open_store(parse_config(config).store)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            count = "SELECT COUNT(*) AS n FROM perly_webhook_events WHERE applied_ms IS NOT NULL"
            if store.query(count)[0]["n"] >= events:
                return
            time.sleep(0.02)
    finally:
        store.close()
    raise SystemExit(f"not every event was applied within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="perly-webhooks --workers")
    parser.add_argument("--postgres", help="a PostgreSQL DSN (default: a temporary SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = store_config(args, tmp)
        (tmp / "config.json").write_text(json.dumps(config))
        server, url = start_receiver(
            tmp / "config.json",
            tmp / "server.log",
            SECRET,
            timeout_s=60,
            extra_args=["--workers", str(args.workers)],
        )
        try:
            events = burst(args.events, args.customers)
            processes = receiver_processes(server.pid)
            split: dict[int, int] = {}
            process_cpu = {pid: tree_cpu_seconds(pid) for pid in processes}
            receiver_cpu, client_cpu = tree_cpu_seconds(server.pid), time.process_time()
            server_cpu = store_server_cpu_seconds(config)

            def connected() -> None:
                nonlocal started
                split.update(connections_by_process(processes, int(urlsplit(url).port or 0)))
                started = time.time()  # the burst starts now

            started = time.time()
            timings = asyncio.run(post_all(url, events, args.concurrency, connected))
            posted = time.time()
            wait_all_applied(config, len(events))
            process_cpu = {pid: tree_cpu_seconds(pid) - cpu for pid, cpu in process_cpu.items()}
            receiver_cpu = tree_cpu_seconds(server.pid) - receiver_cpu
            server_cpu = store_server_cpu_seconds(config) - server_cpu
            client_cpu = time.process_time() - client_cpu
        finally:
            stop_receiver(server)

        store = open_store(parse_config(config).store)
        rows = store.query("SELECT event_id, applied_ms FROM perly_webhook_events")
        customers = store.query("SELECT COUNT(*) AS n FROM perly_customer_health")[0]["n"]
        # PostgreSQL resolves a deadlock after deadlock_timeout (1 s): it shows as a 1 s tail.
        deadlocks = (
            store.query("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")[0][
                "deadlocks"
            ]
            if args.postgres
            else 0
        )
        store.close()

    applied = {r["event_id"]: r["applied_ms"] / 1000 for r in rows if r["applied_ms"]}
    answer_ms = [(done - sent) * 1000 for sent, done in timings.values()]
    health_ms = [(applied[i] - sent) * 1000 for i, (sent, _) in timings.items() if i in applied]
    rate = len(applied) / (max(applied.values()) - started)
    store_name = "postgres" if args.postgres else "sqlite"
    print(
        f"store: {store_name}, workers: {args.workers}, events: {len(events)}, customers: {args.customers},"
        f" concurrency: {args.concurrency}, load average: {os.getloadavg()[0]:.2f}"
    )
    print(f"applied: {len(applied)}/{len(events)} events, {customers} customers with health")
    print(f"POSTs answered: {len(events) / (posted - started):.0f} events/s")
    print(f"applied (stored + health refreshed): {rate:.0f} events/s (target >= {TARGET_EVENTS_PER_S})")
    for name, values, target in (
        ("2xx answer", answer_ms, ""),
        ("updated health", health_ms, f" (target < {TARGET_P99_MS})"),
    ):
        print(
            f"POST -> {name}: p50 {percentile(values, 0.5):.1f} ms, p95 {percentile(values, 0.95):.1f} ms,"
            f" p99 {percentile(values, 0.99):.1f} ms{target}, max {max(values):.1f} ms"
            f" (mean {statistics.fmean(values):.1f} ms)"
        )
    print(
        f"CPU per event: receiver {receiver_cpu / len(events) * 1000:.2f} ms (all its processes),"
        f" this client {client_cpu / len(events) * 1000:.2f} ms ({os.cpu_count()} cores)"
        + (f", PostgreSQL backends {server_cpu / len(events) * 1000:.2f} ms" if args.postgres else "")
    )
    print(
        "receiver processes: "
        + "; ".join(f"{split.get(pid, 0)} connections, {process_cpu[pid]:.2f} CPU s" for pid in processes)
    )
    if args.postgres:
        print(f"deadlocks in this database since the server started: {deadlocks}")


if __name__ == "__main__":
    main()
