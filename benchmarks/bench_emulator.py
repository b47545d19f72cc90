"""Benchmark of the local Stripe emulator. Prints figures; asserts nothing.

1. Pages/s served: 100-object pages of invoices (the biggest objects), zero latency, over HTTP/1.1
   keep-alive, from one client thread and from a few; the emulator runs as its own process (the CLI).
2. Build time and peak memory (ru_maxrss) of a 50,000-customer book, in a fresh process.

Usage: python benchmarks/bench_emulator.py [--customers 2000] [--seconds 5] [--threads 4] [--build 50000]
"""

from __future__ import annotations

import argparse
import json
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


def pages_worker(url: str, resource_name: str, deadline: float, counter: list[int], lock: threading.Lock) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    cursor: str | None = None
    pages = 0
    while time.perf_counter() < deadline:
        params = {"limit": "100"}
        if cursor:
            params["starting_after"] = cursor
        page = session.get(f"{url}/v1/{resource_name}", params=params, timeout=30).json()
        assert len(page["data"]) == 100 or not page["has_more"]
        pages += 1
        cursor = page["data"][-1]["id"] if page["has_more"] else None
    with lock:
        counter[0] += pages


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
        # First pass renders (cold cache); later passes serve cached bytes.
        started = time.perf_counter()
        cold = 0
        cursor = None
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        while True:
            params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
            page = session.get(f"{url}/v1/invoices", params=params, timeout=30).json()
            cold += 1
            if not page["has_more"]:
                break
            cursor = page["data"][-1]["id"]
        cold_rate = cold / (time.perf_counter() - started)
        print(f"  invoices, first pass (rendering): {cold} pages, {cold_rate:,.0f} pages/s")
        for resource_name in ("invoices", "customers"):
            one = measure_pages(url, resource_name, 1, seconds)
            many = measure_pages(url, resource_name, threads, seconds)
            print(
                f"  {resource_name}, 100-object pages, zero latency: {one:,.0f} pages/s (1 client thread), "
                f"{many:,.0f} pages/s ({threads} client threads)"
            )
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
