"""How well the risk score ranks the churn that followed, on the emulator's default book. Prints
figures; asserts nothing (targets: ROC AUC >= 0.75 and top-decile churned-MRR capture >= 40%).

The book (2,000 customers, seed 42) is synced in-process into a fresh SQLite store with health at the
emulator's now; then `run_backtest` scores every paying customer as of each past date with only what
was known then and compares with the churn (MRR to 0) of the next 30 days.

Usage: python benchmarks/bench_backtest.py [--customers 2000] [--seeds 42] [--days-back 30,60,90,120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from destination_perly.backtest import run_backtest  # noqa: E402
from integration_tests.emulator_store import synced_store  # noqa: E402
from integration_tests.stripe_emulator import Emulator  # noqa: E402


def share(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seeds", default="42", help="comma-separated book seeds")
    parser.add_argument("--days-back", default="30,60,90,120", help="as-of dates: days before the data ends")
    parser.add_argument("--horizon-days", type=int, default=30)
    args = parser.parse_args()
    print(
        f"{'seed':>4}  {'as of':10}  {'paying':>6}  {'churned':>7}  {'AUC':>5}  {'top10%':>6}  "
        f"{'prec':>5}  {'recall':>6}  churned MRR caught by the top 10% (per currency)  seconds"
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        emulator = Emulator(customers=args.customers, seed=seed)
        with tempfile.TemporaryDirectory() as folder:
            store = synced_store(emulator, Path(folder) / "perly.db")
            now = datetime.fromtimestamp(emulator.now, UTC)
            for days in (int(d) for d in args.days_back.split(",")):
                started = time.perf_counter()
                r = run_backtest(store, now - timedelta(days=days), args.horizon_days)
                seconds = time.perf_counter() - started
                captured = ", ".join(
                    f"{c.upper()} {share(r.captured_share(c)).strip()}" for c in r.churned_mrr_by_currency
                )
                auc = "  n/a" if r.auc is None else f"{r.auc:5.3f}"
                print(
                    f"{seed:>4}  {r.as_of:%Y-%m-%d}  {r.customers:>6}  {r.churned:>7}  {auc}  "
                    f"{r.top_decile:>6}  {share(r.precision)}  {share(r.recall):>6}  {captured:48}  "
                    f"{seconds:.1f}"
                )
            store.close()


if __name__ == "__main__":
    main()
