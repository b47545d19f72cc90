"""CLI: `python -m integration_tests.stripe_emulator --port 0 --customers 2000 --seed 42`.

The first stdout line is JSON with the URL, so scripts can read the port; runs until interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from .control import mask_key
from .emulator import Emulator


def rate_limit_arg(value: str) -> tuple[float, float] | bool:
    """`on` (or `live`, `stripe`: Stripe's 100/s live, 25/s test), `off`, or `LIVE,TEST` per second."""
    if value in ("on", "true", "live", "stripe", "default"):
        return True
    if value in ("off", "false", "0"):
        return False
    live, _, test = value.partition(",")
    return (float(live), float(test or live))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration_tests.stripe_emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--now", default=None, help="simulated now, ISO 8601 (default 2026-11-01T00:00:00Z)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument(
        "--rate-limit",
        type=rate_limit_arg,
        default=False,
        help="on | off | LIVE,TEST (per key mode, requests/s)",
    )
    parser.add_argument("--faults", default=None, help="e.g. 500:0.01,502:0.01,reset:0.01,lock_timeout:0.02")
    parser.add_argument("--fault-seed", type=int, default=None)
    parser.add_argument("--slow-ms", type=int, default=2000, help="delay of a 'slow' fault")
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--webhook-secret", default=None, help="whsec_...")
    parser.add_argument(
        "--request-log-size", type=int, default=10_000, help="request log entries kept (all are counted)"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    emulator = Emulator(
        customers=args.customers,
        seed=args.seed,
        now=args.now,
        port=args.port,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        rate_limit=args.rate_limit,
        faults=args.faults,
        fault_seed=args.fault_seed,
        slow_ms=args.slow_ms,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        request_log_size=args.request_log_size,
    ).start()
    line = {
        "url": emulator.url,
        "port": emulator.port,
        "now": emulator.now,
        "customers": args.customers,
        "seed": args.seed,
        "keys": sorted(mask_key(key) for key in emulator.keys),  # names only: keys stay out of output
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(line), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
