"""`perly schedule`: one unattended sync driven by PyAirbyte, meant for cron every 6 hours.

PyAirbyte (the optional `airbyte` package: `pip install 'perly-stripe[pyairbyte]'`) runs the installed
connectors as local executables, offline. `destination.write(source, cache=False, state_cache=...)`
pipes records and state straight from the source to the destination and keeps only the state the
destination echoed (so committed) in a DuckDB file under the state directory. The next run starts
from that state: each run is incremental, and a failed run loses nothing and repeats only what was
not committed. A lock file keeps two runs from overlapping.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from connector_spec import print_line
from perly_runner.pipeline import (
    DESTINATION_SCRIPT,
    SOURCE_SCRIPT,
    exclusive_run,
    executable,
    notice_text,
)

INSTALL_HINT = (
    "PyAirbyte is not installed in this Python ({python}): `perly schedule` needs the optional extra, "
    "`pip install 'perly-stripe[pyairbyte]'` (airbyte==0.71.3, about 780 MB), or use `perly sync`, "
    "which needs nothing more"
)


class PyAirbyteMissing(RuntimeError):
    """The optional `airbyte` package cannot be imported; the message says how to install it."""


@dataclass(frozen=True)
class Settings:
    source_config: dict[str, Any]
    destination_config: dict[str, Any]
    bin_dir: Path | None  # None: the connectors installed beside this Python, else on PATH
    state_dir: Path
    full_refresh: bool = False


def load_airbyte() -> ModuleType:
    """Import PyAirbyte offline: no registry look-ups, no telemetry. Must run before any other import."""
    if "airbyte" in sys.modules and os.environ.get("AIRBYTE_OFFLINE_MODE") != "1":
        raise RuntimeError("airbyte was imported before offline mode was set")
    os.environ["AIRBYTE_OFFLINE_MODE"] = "1"
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        return importlib.import_module("airbyte")
    except ImportError:
        raise PyAirbyteMissing(INSTALL_HINT.format(python=sys.executable)) from None


def log(message: str) -> None:
    print_line(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} perly schedule: {message}")


def tell_notices(connector: Any, name: str) -> None:
    """Print each warning or error `connector` logs, as `source: ...` or `destination: ...`.

    PyAirbyte keeps the connectors' log lines in its log files only, all at INFO: a cron user would
    never see a stream the key cannot read and the permission it needs. Its per-message hook
    (`_peek_airbyte_message`, airbyte==0.71.3 is pinned exactly) is wrapped on this instance."""
    peek = connector._peek_airbyte_message

    def peek_and_tell(message: Any, *args: Any, **kwargs: Any) -> Any:
        entry = getattr(message, "log", None)
        if entry is not None:
            text = notice_text(name, getattr(entry.level, "value", entry.level), entry.message)
            if text is not None:
                log(text)
        return peek(message, *args, **kwargs)

    connector._peek_airbyte_message = peek_and_tell


def sync(ab: Any, settings: Settings) -> int:
    """One run; returns the exit status (0 ok or skipped, 1 failed)."""
    # PyAirbyte needs absolute paths to run local executables.
    source_exe = executable(SOURCE_SCRIPT, settings.bin_dir)
    destination_exe = executable(DESTINATION_SCRIPT, settings.bin_dir)
    with exclusive_run(settings.state_dir / "perly-sync.lock") as acquired:
        if not acquired:
            log("another sync is still running; skipped")
            return 0
        state_cache = ab.DuckDBCache(
            db_path=settings.state_dir / "state.duckdb", cache_dir=settings.state_dir / "cache"
        )
        source = ab.get_source(
            SOURCE_SCRIPT, config=settings.source_config, local_executable=source_exe, streams="*"
        )
        destination = ab.get_destination(
            DESTINATION_SCRIPT, config=settings.destination_config, local_executable=destination_exe
        )
        tell_notices(source, "source")
        tell_notices(destination, "destination")
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
