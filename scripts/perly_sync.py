#!/usr/bin/env python3
"""perly_sync: one scheduled Perly sync (Stripe source into the Perly destination), driven by PyAirbyte.

Meant for cron, every 6 hours (see README "Scheduled runs"):

    0 */6 * * * cd /opt/perly && var/pyairbyte-venv/bin/python scripts/perly_sync.py \
        --source-config /etc/perly/source.json --destination-config /etc/perly/destination.json \
        >> var/perly-sync.log 2>&1

PyAirbyte (the optional `airbyte` package, in its own venv: it pins its own dependencies) runs the
project's installed console scripts as local executables, offline. `destination.write(source,
cache=False, state_cache=...)` pipes records and state straight from the source to the destination
and stores only the state the destination echoed (so committed) in a DuckDB file under --state-dir.
The next run starts from that state: each run is incremental, and a failed run loses nothing and
repeats only what was not committed. A lock file keeps two runs from overlapping.

This file uses only the standard library and `airbyte`; it never imports the project's packages, so
it runs in PyAirbyte's venv while the connectors run from the project's venv.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE_NAME = "source-perly-stripe"
DESTINATION_NAME = "destination-perly"


@dataclass(frozen=True)
class Settings:
    source_config: dict[str, Any]
    destination_config: dict[str, Any]
    bin_dir: Path
    state_dir: Path
    full_refresh: bool = False


def load_airbyte() -> ModuleType:
    """Import PyAirbyte offline: no registry look-ups, no telemetry. Must run before any other import."""
    if "airbyte" in sys.modules and os.environ.get("AIRBYTE_OFFLINE_MODE") != "1":
        raise RuntimeError("airbyte was imported before offline mode was set")
    os.environ["AIRBYTE_OFFLINE_MODE"] = "1"
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import airbyte

    return airbyte


def connector_path(bin_dir: Path, name: str) -> Path:
    path = (bin_dir / name).resolve()  # PyAirbyte needs an absolute path to run a local executable
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"{name} not found in {bin_dir}: install the project (pip install -e .) there"
        )
    return path


@contextmanager
def exclusive_run(state_dir: Path) -> Iterator[bool]:
    """Yields False when another run holds the lock (cron fired while the last sync was still going)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "perly-sync.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def log(message: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} perly-sync: {message}", flush=True)


def sync(ab: Any, settings: Settings) -> int:
    """One run; returns the exit status (0 ok or skipped, 1 failed)."""
    source_exe = connector_path(settings.bin_dir, SOURCE_NAME)
    destination_exe = connector_path(settings.bin_dir, DESTINATION_NAME)
    with exclusive_run(settings.state_dir) as acquired:
        if not acquired:
            log("another sync is still running; skipped")
            return 0
        state_cache = ab.DuckDBCache(
            db_path=settings.state_dir / "state.duckdb", cache_dir=settings.state_dir / "cache"
        )
        source = ab.get_source(
            SOURCE_NAME, config=settings.source_config, local_executable=source_exe, streams="*"
        )
        destination = ab.get_destination(
            DESTINATION_NAME, config=settings.destination_config, local_executable=destination_exe
        )
        log("sync started" + (" (full refresh)" if settings.full_refresh else ""))
        try:
            result = destination.write(
                source, cache=False, state_cache=state_cache, force_full_refresh=settings.full_refresh
            )
        except Exception as exc:  # PyAirbyte masks secrets it knows from the connectors' specs
            log(f"sync failed, committed state kept for the next run: {type(exc).__name__}: {exc}")
            return 1
        log(f"sync finished: {result.processed_records} records written")
        return 0


def read_config(path: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perly_sync.py", description=__doc__.splitlines()[0])
    parser.add_argument("--source-config", required=True, help="source config JSON (api_key, ...)")
    parser.add_argument("--destination-config", required=True, help="destination config JSON (store, ...)")
    parser.add_argument(
        "--bin-dir", default=str(ROOT / ".venv" / "bin"), help="where the connectors' console scripts are"
    )
    parser.add_argument(
        "--state-dir", default=str(ROOT / "var" / "pyairbyte-state"), help="where acknowledged state is kept"
    )
    parser.add_argument(
        "--full-refresh", action="store_true", help="ignore the saved state and read everything"
    )
    args = parser.parse_args(argv)
    settings = Settings(
        source_config=read_config(args.source_config),
        destination_config=read_config(args.destination_config),
        bin_dir=Path(args.bin_dir),
        state_dir=Path(args.state_dir),
        full_refresh=args.full_refresh,
    )
    return sync(load_airbyte(), settings)


if __name__ == "__main__":
    sys.exit(main())
