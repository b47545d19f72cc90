"""Checkpoints reach the reader at once through a pipe, without PYTHONUNBUFFERED (as in a container):
the source's STATE while it still waits on Stripe, the destination's acknowledgement while its stdin is
still open. A state held in a buffer is lost if the process is killed, and the sync starts over."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from integration_tests.stripe_emulator import Emulator
from integration_tests.stripe_emulator.server import Handler

ROOT = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 30.0


def unbuffered_env_removed() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def lines_of(stream: IO[bytes]) -> queue.Queue[dict[str, Any] | None]:
    """The process's JSON output lines as they arrive (None at its end), read on a thread."""
    arrived: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def pump() -> None:
        for raw in stream:
            if raw.startswith(b"{"):
                arrived.put(json.loads(raw))
        arrived.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return arrived


def first_state(arrived: queue.Queue[dict[str, Any] | None]) -> dict[str, Any]:
    while (message := arrived.get(timeout=WAIT_SECONDS)) is not None:
        if message["type"] == "STATE":
            return message
    raise AssertionError("the output ended without a STATE")


@pytest.fixture
def charges_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Emulator, threading.Event]]:
    """An emulator whose charges requests wait until the test lets them go."""
    release = threading.Event()
    serve = Handler.serve_stripe

    def held(self: Handler, emulator: Emulator, method: str, path: str, *args: Any) -> int:
        if path.startswith("/v1/charges"):
            release.wait(WAIT_SECONDS)
        return serve(self, emulator, method, path, *args)

    monkeypatch.setattr(Handler, "serve_stripe", held)
    with Emulator(customers=20, seed=11) as emulator:
        yield emulator, release
        release.set()


@pytest.mark.emulator
def test_the_source_flushes_a_state_while_it_still_waits_on_stripe(
    tmp_path: Path, charges_held: tuple[Emulator, threading.Event]
) -> None:
    emulator, release = charges_held
    config = {"api_key": "sk_test_perly_demo", "base_url": emulator.url, "max_requests_per_second": 1000}
    streams = [
        {
            "stream": {"name": name, "json_schema": {}, "supported_sync_modes": ["incremental"]},
            "sync_mode": "incremental",
            "destination_sync_mode": "append_dedup",
        }
        for name in ("customers", "charges")
    ]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "catalog.json").write_text(json.dumps({"streams": streams}))
    source = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "read",
            "--config",
            "config.json",
            "--catalog",
            "catalog.json",
        ],
        cwd=tmp_path,
        env=unbuffered_env_removed(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert source.stdout is not None
        state = first_state(lines_of(source.stdout))
        # Charges are still held: the state came out while the source was waiting, not at its end.
        assert source.poll() is None
        assert state["state"]["stream"]["stream_descriptor"]["name"] == "customers"
    finally:
        release.set()
        source.wait(timeout=60)
    assert source.returncode == 0


def test_the_destination_acknowledges_a_state_while_its_stdin_is_still_open(tmp_path: Path) -> None:
    config = {"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}}
    stream = {
        "stream": {"name": "customers", "json_schema": {}, "supported_sync_modes": ["incremental"]},
        "sync_mode": "incremental",
        "destination_sync_mode": "append_dedup",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "catalog.json").write_text(json.dumps({"streams": [stream]}))
    destination = subprocess.Popen(
        [sys.executable, str(ROOT / "destination_perly" / "main.py"), "write"]
        + ["--config", "config.json", "--catalog", "catalog.json"],
        cwd=tmp_path,
        env=unbuffered_env_removed(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert destination.stdin is not None
    assert destination.stdout is not None
    try:
        record = {"stream": "customers", "data": {"id": "cus_1", "updated": 1}, "emitted_at": 0}
        state = {
            "type": "STREAM",
            "stream": {"stream_descriptor": {"name": "customers"}, "stream_state": {"n": 1}},
        }
        destination.stdin.write(orjson.dumps({"type": "RECORD", "record": record}) + b"\n")
        destination.stdin.write(orjson.dumps({"type": "STATE", "state": state}) + b"\n")
        destination.stdin.flush()

        acknowledged = first_state(lines_of(destination.stdout))

        assert acknowledged["state"] == state
        assert destination.poll() is None  # still reading: the state was not held until the end
    finally:
        destination.stdin.close()
        destination.wait(timeout=60)
    assert destination.returncode == 0
