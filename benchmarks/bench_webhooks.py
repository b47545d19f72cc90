"""Webhook burst benchmark: N signed events POSTed to a real `perly-webhooks` (uvicorn) on 127.0.0.1.

Prints events/s applied (stored and health refreshed) and, per event, the time from POST to its
answer and from POST to updated health (the ledger's applied time), p50/p95.

    python benchmarks/bench_webhooks.py --events 2000 --customers 200 --concurrency 8
    python benchmarks/bench_webhooks.py --postgres "$PERLY_TEST_POSTGRES_DSN"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from destination_perly.config import open_store, parse_config  # noqa: E402
from integration_tests.demo import start_receiver, stop_receiver  # noqa: E402
from integration_tests.postgres import store_settings  # noqa: E402
from unit_tests.webhooks.builders import SECRET, T0, customer, event, failed_charge, sign, subscription  # noqa: E402

DAY = 86400


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


async def post_all(
    url: str, events: list[dict[str, Any]], concurrency: int
) -> dict[str, tuple[float, float]]:
    """event id -> (POST sent, answer received), wall clock seconds."""
    bodies = [(e["id"], orjson.dumps(e)) for e in events]
    timings: dict[str, tuple[float, float]] = {}
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            event_id, body = queue.get_nowait()
            sent = time.time()
            headers = {"Stripe-Signature": sign(body, SECRET, int(sent)), "Content-Type": "application/json"}
            response = await client.post("/webhooks/stripe", content=body, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"POST {event_id}: {response.status_code} {response.text}")
            timings[event_id] = (sent, time.time())

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--postgres", help="a PostgreSQL DSN (default: a temporary SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = store_config(args, tmp)
        (tmp / "config.json").write_text(json.dumps(config))
        server, url = start_receiver(tmp / "config.json", tmp / "server.log", SECRET, timeout_s=30)
        try:
            events = burst(args.events, args.customers)
            started = time.time()
            timings = asyncio.run(post_all(url, events, args.concurrency))
            posted = time.time()
            while (stats := httpx.get(f"{url}/healthz").json())["in_progress"] > 0:
                time.sleep(0.02)
        finally:
            stop_receiver(server)

        store = open_store(parse_config(config).store)
        rows = store.query("SELECT event_id, applied_ms FROM perly_webhook_events")
        customers = store.query("SELECT COUNT(*) AS n FROM perly_customer_health")[0]["n"]
        store.close()

    applied = {r["event_id"]: r["applied_ms"] / 1000 for r in rows if r["applied_ms"]}
    answer_ms = [(done - sent) * 1000 for sent, done in timings.values()]
    health_ms = [(applied[i] - sent) * 1000 for i, (sent, _) in timings.items() if i in applied]
    last_applied = max(applied.values())
    store_name = "postgres" if args.postgres else "sqlite"
    print(
        f"store: {store_name}, events: {len(events)}, customers: {args.customers},"
        f" concurrency: {args.concurrency}"
    )
    print(f"applied: {len(applied)}/{len(events)} events, {customers} customers with health ({stats})")
    print(f"POSTs answered: {len(events) / (posted - started):.0f} events/s")
    print(f"applied (stored + health refreshed): {len(applied) / (last_applied - started):.0f} events/s")
    p50, p95 = percentile(answer_ms, 0.5), percentile(answer_ms, 0.95)
    print(f"POST -> 2xx answer: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    p50, p95 = percentile(health_ms, 0.5), percentile(health_ms, 0.95)
    print(
        f"POST -> updated health: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(health_ms):.1f} ms"
        f" (mean {statistics.fmean(health_ms):.1f} ms)"
    )


if __name__ == "__main__":
    main()
