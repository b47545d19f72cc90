"""Source into destination, as Airbyte runs them: `source-perly-stripe read` piped into
`destination-perly write`, relaying messages so records can be counted, and saving only the STATE
messages the destination echoes (so committed) in a ledger the next run starts from.

`perly sync`, `make demo` and the end-to-end tests all run syncs through `run_sync`: one way to run
source into destination.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from connector_spec import print_line
from destination_perly.private_files import make_private_dirs, write_private

SOURCE_SCRIPT = "source-perly-stripe"
DESTINATION_SCRIPT = "destination-perly"


class SyncFailed(RuntimeError):
    """A connector exited with an error (or is not installed); the message says why."""


def executable(name: str, bin_dir: Path | None = None) -> str:
    """The absolute path of an installed console script: in `bin_dir` when given, else next to this
    Python (its venv), else on PATH."""
    if bin_dir is not None:
        path = bin_dir / name
        if not os.access(path, os.X_OK):
            raise SyncFailed(f"{name} not found in {bin_dir}: install perly-stripe there (pip install .)")
        return str(path.absolute())
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SyncFailed(
            f"{name} is not installed: install perly-stripe (pip install .) in this Python's venv"
        )
    return str(Path(found).absolute())


@contextmanager
def exclusive_run(lock_path: Path) -> Iterator[bool]:
    """Yields False when another run holds the lock: a run started (by cron, or by hand) while the
    last one with the same state is still going would read the same changes twice and race it for
    the state file and the run's files."""
    make_private_dirs(lock_path.parent)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_json(path: Path, value: Any) -> Path:
    """Write atomically and owner-only: configs hold API keys and passwords."""
    make_private_dirs(path.parent)
    return write_private(path, orjson.dumps(value, option=orjson.OPT_INDENT_2))


# ---------------------------------------------------------------------------------------------------
# Catalog


def discover(source_config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [executable(SOURCE_SCRIPT), "discover", "--config", str(source_config)],
        capture_output=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        message = parse_message(line)
        if message and message.get("type") == "CATALOG":
            catalog: dict[str, Any] = message["catalog"]
            return catalog
    raise SyncFailed(f"discover returned no catalog: {error_lines(out.stdout.decode(errors='replace'))}")


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


def parse_message(line: bytes) -> dict[str, Any] | None:
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def error_lines(output: str, limit: int = 5) -> str:
    """The last error lines a connector printed (its TRACE errors and stderr), for the user."""
    lines = []
    for line in output.splitlines():
        message = parse_message(line.encode())
        if message is None:
            if line.strip():
                lines.append(line.strip())
        elif message.get("type") == "TRACE" and message["trace"].get("type") == "ERROR":
            lines.append(message["trace"]["error"].get("message", ""))
        elif message.get("type") == "LOG" and message["log"].get("level") in ("ERROR", "FATAL"):
            lines.append((str(message["log"].get("message", "")).splitlines() or [""])[0])
    # A connector often says the same thing as a log line and as its error trace.
    lines = [line for i, line in enumerate(lines) if i == 0 or line != lines[i - 1]]
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
        return str(kind)

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
Notice = Callable[[str], None]
# The connectors' log levels a user must see as they come: a stream skipped for a missing permission,
# records the destination skipped, a file made owner-only. Their INFO lines stay in the run's files.
NOTICE_LEVELS = ("WARN", "ERROR", "FATAL")


def notice_text(connector: str, level: object, message: object) -> str | None:
    """What a user is shown of a connector's log line as it comes: the first line of a warning or
    an error, as `source: ...` or `destination: ...`; None for the other levels."""
    if level not in NOTICE_LEVELS:
        return None
    lines = str(message or "").strip().splitlines()
    return f"{connector}: {lines[0] if lines else level}"


def run_sync(
    workdir: Path,
    source_config: dict[str, Any],
    destination_config: dict[str, Any],
    catalog: dict[str, Any],
    state_path: Path | None = None,
    progress: Progress | None = None,
    progress_every_s: float = 1.0,
    stop_after_records: int | None = None,
    notice: Notice | None = None,
) -> SyncResult:
    """`source read | destination write`, relaying messages so records can be counted.

    Only STATE messages the destination echoes (so committed) are saved to `state_path`; the next
    run reads from that state. The connectors' copies of the configs (mode 0600) are removed when
    they exit. `stop_after_records` crashes the sync part way, as the kill-mid-sync test needs:
    once that many records have been relayed, the next state waits until the destination has
    acknowledged one (so the re-run has committed progress to resume from, however fast the source),
    then a quarter as many records more are relayed, not yet committed, and both connectors are
    killed. `notice` is given each warning or error
    either connector logs, as `source: ...` or `destination: ...`.
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
    try:
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
            checkpoint_sent, checkpointed = threading.Event(), threading.Event()

            def tell(connector: str, message: dict[str, Any]) -> None:
                log = message.get("log") if message.get("type") == "LOG" else None
                text = (
                    notice_text(connector, log.get("level"), log.get("message"))
                    if isinstance(log, dict)
                    else None
                )
                if notice is not None and text is not None:
                    notice(text)

            def relay(src_out: IO[bytes], dst_in: IO[bytes]) -> None:
                last = time.monotonic()
                try:
                    for line in src_out:
                        message = parse_message(line) or {}
                        kind = message.get("type")
                        if kind == "RECORD":
                            result.records[message["record"]["stream"]] += 1
                        elif kind in ("TRACE", "LOG"):
                            source_errors.append(line.decode(errors="replace"))
                            del source_errors[:-20]
                            tell("source", message)
                        if kind in ("RECORD", "STATE", "TRACE"):
                            dst_in.write(line)  # LOG lines are the source's own; the destination ignores them
                        if stop_after_records is not None and result.total >= stop_after_records:
                            if kind == "STATE" and not checkpoint_sent.is_set():
                                dst_in.flush()
                                checkpoint_sent.set()
                                checkpointed.wait(timeout=60)
                            if checkpointed.is_set() and result.total >= stop_after_records * 5 // 4:
                                killed.set()
                                source.kill()
                                destination.kill()
                                return
                        now = time.monotonic()
                        if progress and now - last >= progress_every_s:
                            progress(result, now - started)
                            last = now
                except BrokenPipeError:
                    # The destination died (its exit code and messages tell why): the source would
                    # block on a full pipe forever.
                    source.kill()
                finally:
                    try:
                        dst_in.close()
                    except BrokenPipeError:
                        pass

            relay_thread = threading.Thread(
                target=relay, args=(source.stdout, destination.stdin), daemon=True
            )
            relay_thread.start()
            for line in destination.stdout:
                message = parse_message(line)
                if message is None:
                    continue
                if message.get("type") == "STATE":
                    ledger.acknowledge(message["state"])
                    result.states_acknowledged += 1
                    if checkpoint_sent.is_set():
                        checkpointed.set()
                elif message.get("type") in ("TRACE", "LOG"):
                    destination_errors.append(line.decode(errors="replace"))
                    del destination_errors[:-20]
                    tell("destination", message)
            if destination.wait() != 0:
                # The destination failed (e.g. its config): a source with nothing to write yet (a
                # slow first page, retries against an unreachable Stripe) would otherwise run on
                # until its next write breaks the pipe.
                source.kill()
            relay_thread.join()
            source_code, destination_code = source.wait(), destination.wait()
    finally:
        # The copies of the configs hold the API key and passwords: they live only while the
        # connectors start (each reads its config once).
        for copied in (src_config, dst_config):
            copied.unlink(missing_ok=True)
    result.seconds = time.monotonic() - started
    result.state = ledger.messages()
    if killed.is_set():
        raise SyncFailed(f"pipeline killed after {result.total} records (as asked)")
    # The destination first: when it dies, the source is stopped, and its exit says nothing.
    if destination_code != 0:
        stderr = (workdir / "destination.stderr").read_text(errors="replace")
        raise SyncFailed(
            f"destination exited with {destination_code}: {error_lines(''.join(destination_errors) + stderr)}"
        )
    if source_code != 0:
        stderr = (workdir / "source.stderr").read_text(errors="replace")
        raise SyncFailed(f"source exited with {source_code}: {error_lines(''.join(source_errors) + stderr)}")
    if progress:
        progress(result, result.seconds)
    return result


def print_notice(text: str) -> None:
    print_line(text, sys.stderr)


def print_progress(result: SyncResult, elapsed: float) -> None:
    # Called from the relay, which takes a BrokenPipeError for a dead destination: print_line drops a
    # closed stdout's output instead.
    if not result.total:
        print_line(f"  {elapsed:6.1f}s  waiting for the first records")
        return
    streams = ", ".join(f"{name} {n:,}" for name, n in sorted(result.records.items()))
    rate = result.total / elapsed if elapsed > 0 else 0.0
    print_line(f"  {elapsed:6.1f}s  {result.total:>8,} records ({rate:,.0f}/s)  {streams}")
