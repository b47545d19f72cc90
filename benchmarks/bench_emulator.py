"""Benchmark of the local Stripe emulator. Prints figures; asserts nothing.

1. Pages/s served: 100-object pages of invoices (the biggest objects), zero latency, over HTTP/1.1
   keep-alive, from one client thread and from a few; the emulator runs as its own process (the CLI).
   Then the requests it counted and its resident memory (the request log is bounded).
2. Build time and peak memory (ru_maxrss) of a 50,000-customer book, in a fresh process.

Usage: python benchmarks/bench_emulator.py [--customers 2000] [--seconds 5] [--threads 4] [--build 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk_test_perly_demo"  # the emulator's built-in test key, not a real Stripe key


def build_in_this_process(customers: int) -> None:
    sys.path.insert(0, str(ROOT))
    from integration_tests.stripe_emulator.book import Book

    started = time.perf_counter()
    book = Book(customers=customers)
    seconds = time.perf_counter() - started
    counts = {name: len(store.objects) for name, store in book.stores.items() if store.objects}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 1), "peak_mb": round(peak_mb), "counts": counts}))


PREFIXES = {"invoices": b"in_", "customers": b"cus_"}


def next_cursor(body: bytes, prefix: bytes) -> str | None:
    """The last object's id, found in the raw bytes: parsing 300 KB of JSON per page would make
    this a benchmark of the client, not of the emulator."""
    if not body.endswith(b"}") or b'"has_more":true' not in body[-200:]:
        return None
    start = body.rindex(b'{"id":"' + prefix) + len(b'{"id":"')
    return body[start : body.index(b'"', start)].decode()


def pages_worker(
    url: str, resource_name: str, deadline: float, counter: list[int], lock: threading.Lock
) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    cursor: str | None = None
    pages = 0
    while time.perf_counter() < deadline:
        params = {"limit": "100"}
        if cursor:
            params["starting_after"] = cursor
        body = session.get(f"{url}/v1/{resource_name}", params=params, timeout=30).content
        pages += 1
        cursor = next_cursor(body, PREFIXES[resource_name])
    with lock:
        counter[0] += pages


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_pages(url: str, resource_name: str, threads: int, seconds: float) -> float:
    counter, lock = [0], threading.Lock()
    deadline = time.perf_counter() + seconds
    workers = [
        threading.Thread(target=pages_worker, args=(url, resource_name, deadline, counter, lock))
        for _ in range(threads)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return counter[0] / (time.perf_counter() - started)


def serve_and_measure(customers: int, seconds: float, threads: int) -> None:
    command = [sys.executable, "-m", "integration_tests.stripe_emulator", "--port", "0"]
    command += ["--customers", str(customers)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        url = first["url"]
        print(f"emulator: {customers} customers, built in {first['build_seconds']} s, at {url}")
        state = requests.get(f"{url}/_emulator/state", timeout=30).json()
        print(f"  objects: {state['counts']}")
        # The first pass races the emulator's background warm-up (objects rendered to JSON once);
        # later passes serve cached bytes.
        started = time.perf_counter()
        cpu_before = cpu_seconds(process.pid)
        cold = 0
        cursor = None
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        while True:
            params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
            body = session.get(f"{url}/v1/invoices", params=params, timeout=30).content
            cold += 1
            cursor = next_cursor(body, PREFIXES["invoices"])
            if cursor is None:
                break
        cold_rate = cold / (time.perf_counter() - started)
        cold_cpu = cold / max(cpu_seconds(process.pid) - cpu_before, 1e-9)
        print(
            f"  invoices, first pass right after start (rendering): {cold} pages, {cold_rate:,.0f} pages/s; "
            f"emulator CPU: {cold_cpu:,.0f} pages per CPU-second"
        )
        for resource_name in ("invoices", "customers"):
            for count in (1, threads):
                cpu_before = cpu_seconds(process.pid)
                started = time.perf_counter()
                rate = measure_pages(url, resource_name, count, seconds)
                pages = rate * (time.perf_counter() - started)
                per_core = pages / max(cpu_seconds(process.pid) - cpu_before, 1e-9)
                print(
                    f"  {resource_name}, 100-object pages, zero latency, {count} client thread(s): "
                    f"{rate:,.0f} pages/s; emulator CPU: {per_core:,.0f} pages per CPU-second"
                )
        # The request log is bounded: every request counted, only the newest entries held.
        state = requests.get(f"{url}/_emulator/state", timeout=30).json()
        rss_mb = (
            int(Path(f"/proc/{process.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
        )
        print(
            f"  requests served: {state['requests']:,} (by status {state['requests_by_status']}); "
            f"emulator resident memory now: {rss_mb:,} MB"
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=2000, help="book size for the pages/s run")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--build", type=int, default=50_000, help="book size for the build run (0: skip)")
    parser.add_argument("--build-only-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only_child:
        build_in_this_process(args.build_only_child)
        return 0

    print("1. Pages served")
    serve_and_measure(args.customers, args.seconds, args.threads)
    if args.build:
        print(f"\n2. Building a {args.build:,}-customer book (fresh process)")
        output = subprocess.run(
            [sys.executable, __file__, "--build-only-child", str(args.build)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        figures = json.loads(output.strip().splitlines()[-1])
        print(f"  build time: {figures['seconds']} s, peak memory (ru_maxrss): {figures['peak_mb']:,} MB")
        print(f"  objects: {figures['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
