"""`make demo`: churn risk from Stripe billing data, end to end, on the local Stripe emulator.

Starts the emulator with its default seeded book, runs a full sync (`source-perly-stripe read` piped
into `destination-perly write`, SQLite store var/demo/perly.db), advances the emulator's clock, runs an
incremental sync from the state the destination acknowledged, then prints the summary and the
ranked at-risk customers and writes var/perly-report.html.

The pipeline helpers here (`configured_catalog`, `run_sync`) are also what the end-to-end tests and
scripts/container-checks.sh use: one way to run source into destination.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
DEMO_KEY = "sk_test_perly_demo"  # the emulator's built-in test secret key: not a real Stripe key
SOURCE_SCRIPT = "source-perly-stripe"
DESTINATION_SCRIPT = "destination-perly"


class SyncFailed(RuntimeError):
    """A connector exited with an error; the message carries the end of its error output."""


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


def executable(name: str) -> str:
    """The console script installed next to this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SyncFailed(f"{name} is not installed: run `pip install -e .` in the project's venv")
    return found


def iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, value: Any) -> Path:
    """Write atomically, so a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2))
    tmp.chmod(0o600)  # configs hold API keys and passwords
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------
# Catalog


def discover(source_config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [executable(SOURCE_SCRIPT), "discover", "--config", str(source_config)],
        capture_output=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        message = _parse(line)
        if message and message.get("type") == "CATALOG":
            catalog: dict[str, Any] = message["catalog"]
            return catalog
    raise SyncFailed(f"discover returned no catalog: {_errors(out.stdout.decode(errors='replace'))}")


def configured_catalog(catalog: dict[str, Any], streams: list[str] | None = None) -> dict[str, Any]:
    """Every stream (or the named ones), incremental + append_dedup where the source supports it."""
    configured = []
    for stream in catalog["streams"]:
        if streams is not None and stream["name"] not in streams:
            continue
        incremental = "incremental" in stream.get("supported_sync_modes", [])
        entry: dict[str, Any] = {
            "stream": stream,
            "sync_mode": "incremental" if incremental else "full_refresh",
            "destination_sync_mode": "append_dedup" if incremental else "overwrite",
            "primary_key": stream.get("source_defined_primary_key") or [["id"]],
        }
        if incremental:
            entry["cursor_field"] = stream.get("default_cursor_field") or ["updated"]
        configured.append(entry)
    return {"streams": configured}


# ---------------------------------------------------------------------------------------------------
# Running source into destination


@dataclass
class SyncResult:
    records: Counter[str] = field(default_factory=Counter)
    states_acknowledged: int = 0
    seconds: float = 0.0
    state: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.records.values())


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _errors(output: str, limit: int = 5) -> str:
    """The last error lines a connector printed (its TRACE errors and stderr), for the user."""
    lines = []
    for line in output.splitlines():
        message = _parse(line.encode())
        if message is None:
            if line.strip():
                lines.append(line.strip())
        elif message.get("type") == "TRACE" and message["trace"].get("type") == "ERROR":
            lines.append(message["trace"]["error"].get("message", ""))
        elif message.get("type") == "LOG" and message["log"].get("level") in ("ERROR", "FATAL"):
            lines.append(message["log"].get("message", "").splitlines()[0])
    return " | ".join(lines[-limit:]) or "(no error message)"


class StateLedger:
    """The destination-acknowledged state, kept per stream (or global), saved after every ack."""

    def __init__(self, path: Path | None, initial: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.by_key: dict[str, dict[str, Any]] = {}
        for message in initial or []:
            self.by_key[self._key(message)] = message

    @staticmethod
    def _key(state: dict[str, Any]) -> str:
        kind = state.get("type", "LEGACY")
        if kind == "STREAM":
            descriptor = state["stream"]["stream_descriptor"]
            return f"stream:{descriptor.get('namespace') or ''}:{descriptor['name']}"
        return kind

    def acknowledge(self, state: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if k != "sourceStats" and k != "destinationStats"}
        if state.get("type") == "GLOBAL":
            self.by_key = {}
        self.by_key[self._key(state)] = state
        if self.path is not None:
            write_json(self.path, self.messages())

    def messages(self) -> list[dict[str, Any]]:
        return list(self.by_key.values())


def load_state(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    state: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return state


Progress = Callable[[SyncResult, float], None]


def run_sync(
    workdir: Path,
    source_config: dict[str, Any],
    destination_config: dict[str, Any],
    catalog: dict[str, Any],
    state_path: Path | None = None,
    progress: Progress | None = None,
    progress_every_s: float = 1.0,
    stop_after_records: int | None = None,
) -> SyncResult:
    """`source read | destination write`, relaying messages so records can be counted.

    Only STATE messages the destination echoes (so committed) are saved to `state_path`; the next
    run reads from that state. `stop_after_records` kills both connectors once that many records have
    been relayed: the crash the kill-mid-sync test needs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    src_config = write_json(workdir / "source_config.json", source_config)
    dst_config = write_json(workdir / "destination_config.json", destination_config)
    catalog_path = write_json(workdir / "configured_catalog.json", catalog)
    initial_state = load_state(state_path) if state_path else []
    read = [executable(SOURCE_SCRIPT), "read", "--config", str(src_config), "--catalog", str(catalog_path)]
    if initial_state:
        read += ["--state", str(write_json(workdir / "input_state.json", initial_state))]
    write = [
        executable(DESTINATION_SCRIPT),
        "write",
        "--config",
        str(dst_config),
        "--catalog",
        str(catalog_path),
    ]

    result = SyncResult()
    ledger = StateLedger(state_path, initial_state)
    started = time.monotonic()
    with (
        open(workdir / "source.stderr", "wb") as source_err,
        open(workdir / "destination.stderr", "wb") as destination_err,
    ):
        source = subprocess.Popen(read, stdout=subprocess.PIPE, stderr=source_err)
        destination = subprocess.Popen(
            write, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=destination_err
        )
        assert source.stdout is not None
        assert destination.stdin is not None
        assert destination.stdout is not None
        source_errors: list[str] = []
        destination_errors: list[str] = []
        killed = threading.Event()

        def relay(src_out: IO[bytes], dst_in: IO[bytes]) -> None:
            last = time.monotonic()
            try:
                for line in src_out:
                    message = _parse(line) or {}
                    kind = message.get("type")
                    if kind == "RECORD":
                        result.records[message["record"]["stream"]] += 1
                    elif kind in ("TRACE", "LOG"):
                        source_errors.append(line.decode(errors="replace"))
                        del source_errors[:-20]
                    if kind in ("RECORD", "STATE", "TRACE"):
                        dst_in.write(line)  # LOG lines are the source's own; the destination ignores them
                    if stop_after_records is not None and result.total >= stop_after_records:
                        killed.set()
                        source.kill()
                        destination.kill()
                        return
                    now = time.monotonic()
                    if progress and now - last >= progress_every_s:
                        progress(result, now - started)
                        last = now
            except BrokenPipeError:
                pass  # the destination died; its exit code and messages tell why
            finally:
                try:
                    dst_in.close()
                except BrokenPipeError:
                    pass

        relay_thread = threading.Thread(target=relay, args=(source.stdout, destination.stdin), daemon=True)
        relay_thread.start()
        for line in destination.stdout:
            message = _parse(line)
            if message is None:
                continue
            if message.get("type") == "STATE":
                ledger.acknowledge(message["state"])
                result.states_acknowledged += 1
            elif message.get("type") in ("TRACE", "LOG"):
                destination_errors.append(line.decode(errors="replace"))
                del destination_errors[:-20]
        relay_thread.join()
        source_code, destination_code = source.wait(), destination.wait()
    result.seconds = time.monotonic() - started
    result.state = ledger.messages()
    if killed.is_set():
        raise SyncFailed(f"pipeline killed after {result.total} records (as asked)")
    if source_code != 0:
        stderr = (workdir / "source.stderr").read_text(errors="replace")
        raise SyncFailed(f"source exited with {source_code}: {_errors(''.join(source_errors) + stderr)}")
    if destination_code != 0:
        stderr = (workdir / "destination.stderr").read_text(errors="replace")
        raise SyncFailed(
            f"destination exited with {destination_code}: {_errors(''.join(destination_errors) + stderr)}"
        )
    if progress:
        progress(result, result.seconds)
    return result


# ---------------------------------------------------------------------------------------------------
# The demo


def print_progress(result: SyncResult, elapsed: float) -> None:
    if not result.total:
        print(f"  {elapsed:6.1f}s  waiting for the first records", flush=True)
        return
    streams = ", ".join(f"{name} {n:,}" for name, n in sorted(result.records.items()))
    rate = result.total / elapsed if elapsed > 0 else 0.0
    print(f"  {elapsed:6.1f}s  {result.total:>8,} records ({rate:,.0f}/s)  {streams}", flush=True)


def demo(customers: int | None, seed: int | None, advance_days: int, top: int) -> int:
    from destination_perly.report import (
        read_report,
        render_at_risk,
        render_html,
        render_summary,
        sqlite_query,
    )
    from integration_tests.stripe_emulator import Emulator

    VAR.mkdir(exist_ok=True)
    # The demo keeps its own store, so it never touches a real one at var/perly.db.
    workdir = VAR / "demo"
    store, state_path = workdir / "perly.db", workdir / "state.json"
    for stale in (store, Path(f"{store}-wal"), Path(f"{store}-shm"), state_path):
        stale.unlink(missing_ok=True)  # each demo starts from a fresh book and an empty store

    options = {k: v for k, v in (("customers", customers), ("seed", seed)) if v is not None}
    with Emulator(**options) as emulator:
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

    report = read_report(sqlite_query(store), period_start=datetime.fromisoformat(first_as_of))
    print("\n" + render_summary(report) + "\n")
    print(render_at_risk(report, top))
    html = VAR / "perly-report.html"
    html.write_text(render_html(report), encoding="utf-8")  # the page lists every at-risk customer
    print(f"\nStore: {store.relative_to(ROOT)}   HTML report: {html.relative_to(ROOT)}")
    print(
        f"Report again any time: perly-report --db {store.relative_to(ROOT)} --html {html.relative_to(ROOT)}"
    )
    return 0


def sync(source_config: Path, destination_config: Path, state_path: Path, top: int, html: Path | None) -> int:
    """One sync of a real account (or anything the configs name), then the report: the demo's path."""
    from destination_perly.report import (
        StoreUnavailable,
        query_for_config,
        read_report,
        render_at_risk,
        render_html,
        render_summary,
    )

    source = json.loads(source_config.read_text(encoding="utf-8"))
    destination = json.loads(destination_config.read_text(encoding="utf-8"))
    catalog = configured_catalog(discover(source_config))
    mode = "incremental, from the saved state" if load_state(state_path) else "full"
    print(f"Sync ({mode}): {', '.join(s['stream']['name'] for s in catalog['streams'])}")
    workdir = state_path.parent / "sync-run"  # the run's files (configs, catalog, stderr) beside its state
    result = run_sync(workdir, source, destination, catalog, state_path, print_progress)
    print(f"   {result.total:,} records in {result.seconds:.1f}s; state saved to {state_path}")
    try:
        report = read_report(query_for_config(destination))
    except StoreUnavailable as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    print("\n" + render_summary(report) + "\n")
    print(render_at_risk(report, top))
    if html:
        html.write_text(render_html(report), encoding="utf-8")
        print(f"\nHTML report: {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integration_tests.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("demo", "sync"),
        default="demo",
        help="demo (default): the emulator end to end; sync: one sync with your own configs",
    )
    parser.add_argument(
        "--customers", type=int, help="demo: size of the emulated book (default: the emulator's)"
    )
    parser.add_argument("--seed", type=int, help="demo: seed of the emulated book (default: the emulator's)")
    parser.add_argument("--days", type=int, default=7, help="demo: how far to advance the clock (default 7)")
    parser.add_argument("--source-config", type=Path, help="sync: the source config JSON (api_key, ...)")
    parser.add_argument(
        "--destination-config", type=Path, help="sync: the destination config JSON (store, ...)"
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=VAR / "state.json",
        help="sync: where the committed state is kept between runs (default var/state.json)",
    )
    parser.add_argument("--html", type=Path, help="sync: also write the HTML report here")
    parser.add_argument("--top", type=int, default=15, help="at-risk customers to print (default 15)")
    args = parser.parse_args(argv)
    try:
        if args.command == "sync":
            if not args.source_config or not args.destination_config:
                parser.error("sync needs --source-config and --destination-config")
            return sync(args.source_config, args.destination_config, args.state, args.top, args.html)
        return demo(args.customers, args.seed, args.days, args.top)
    except SyncFailed as exc:
        print(f"\n{args.command} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
