"""End-to-end runs of the destination's CLI (`spec`, `check`, `write`) with the real health engine,
fed with the Stripe emulator's book (objects taken in-process: no server)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from integration_tests.stripe_emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
STREAMS = ("products", "prices", "coupons", "customers", "subscriptions", "invoices", "charges", "events")


@pytest.fixture(scope="module")
def book() -> dict[str, Any]:
    emulator = Emulator(customers=40, seed=7)
    now = emulator.now
    records: dict[str, list[dict[str, Any]]] = {}
    for stream in STREAMS:
        records[stream] = [
            {**obj, "updated": obj.get("created", now) if stream == "events" else now}
            for obj in emulator.objects(stream)
        ]
    return {"now": now, "records": records}


def cli(*args: str, stdin: bytes = b"") -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "destination_perly" / "main.py"), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]


def write_files(tmp_path: Path, config: dict[str, Any], streams: list[dict[str, Any]]) -> tuple[str, str]:
    config_path, catalog_path = tmp_path / "config.json", tmp_path / "catalog.json"
    config_path.write_text(json.dumps(config))
    catalog_path.write_text(json.dumps({"streams": streams}))
    return str(config_path), str(catalog_path)


def configured(name: str, mode: str = "append_dedup") -> dict[str, Any]:
    return {
        "stream": {"name": name, "json_schema": {"type": "object"}, "supported_sync_modes": ["incremental"]},
        "sync_mode": "incremental",
        "destination_sync_mode": mode,
        "cursor_field": ["updated"],
        "primary_key": [["id"]],
    }


def messages(records: dict[str, list[dict[str, Any]]]) -> Iterator[bytes]:
    for position, stream in enumerate(STREAMS):
        for data in records[stream]:
            yield orjson.dumps(
                {"type": "RECORD", "record": {"stream": stream, "data": data, "emitted_at": 0}}
            )
        state = {"stream_descriptor": {"name": stream}, "stream_state": {"updated": position}}
        yield orjson.dumps({"type": "STATE", "state": {"type": "STREAM", "stream": state}})


def test_spec_runs_from_main_py() -> None:
    (spec,) = cli("spec")
    assert spec["type"] == "SPEC"
    assert "store" in spec["spec"]["connectionSpecification"]["properties"]


def test_check_reports_success_on_a_fresh_sqlite_path(tmp_path: Path) -> None:
    config, _ = write_files(tmp_path, {"store": {"store_type": "sqlite", "path": str(tmp_path / "p.db")}}, [])
    statuses = [m for m in cli("check", "--config", config) if m["type"] == "CONNECTION_STATUS"]
    assert statuses[0]["connectionStatus"]["status"] == "SUCCEEDED"


def test_write_stores_the_book_acknowledges_every_state_and_computes_health(
    tmp_path: Path, book: dict[str, Any]
) -> None:
    db = tmp_path / "perly.db"
    as_of = "2026-11-01T00:00:00Z"
    config, catalog = write_files(
        tmp_path,
        {"store": {"store_type": "sqlite", "path": str(db)}, "as_of": as_of},
        [configured(s) for s in STREAMS],
    )
    stdin = b"\n".join(messages(book["records"])) + b"\n"

    output = cli("write", "--config", config, "--catalog", catalog, stdin=stdin)
    states = [m["state"]["stream"]["stream_descriptor"]["name"] for m in output if m["type"] == "STATE"]
    assert states == list(STREAMS)

    with sqlite3.connect(db) as conn:
        customers = {r[0] for r in conn.execute("SELECT id FROM stripe_customers")}
        health = dict(conn.execute("SELECT customer_id, as_of FROM perly_customer_health").fetchall())
        movements = conn.execute("SELECT COUNT(*) FROM perly_mrr_movements").fetchone()[0]
    assert customers == {c["id"] for c in book["records"]["customers"]}
    # Every customer, plus any whose customer object is gone but whose invoices or charges remain.
    referenced = {
        r.get("customer") for s in ("subscriptions", "invoices", "charges") for r in book["records"][s]
    }
    assert customers <= set(health) <= customers | referenced
    assert set(health.values()) == {as_of}

    cli("write", "--config", config, "--catalog", catalog, stdin=stdin)  # the same sync again
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM perly_mrr_movements").fetchone()[0] == movements
        assert conn.execute("SELECT COUNT(*) FROM perly_customer_health").fetchone()[0] == len(health)


def test_write_with_a_bad_config_fails_as_a_config_error(tmp_path: Path) -> None:
    config, catalog = write_files(tmp_path, {"store": {"store_type": "oracle"}}, [configured("customers")])
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "destination_perly" / "main.py"),
            "write",
            "--config",
            config,
            "--catalog",
            catalog,
        ],
        input=b"",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    traces = [json.loads(line) for line in done.stdout.decode().splitlines() if '"TRACE"' in line]
    assert any(t["trace"]["error"]["failure_type"] == "config_error" for t in traces)


def test_write_skips_a_line_that_is_not_json_without_echoing_it(tmp_path: Path, book: dict[str, Any]) -> None:
    db = tmp_path / "perly.db"
    config, catalog = write_files(
        tmp_path, {"store": {"store_type": "sqlite", "path": str(db)}}, [configured("customers")]
    )
    customers = book["records"]["customers"][:3]
    lines = [
        orjson.dumps({"type": "RECORD", "record": {"stream": "customers", "data": c}}) for c in customers
    ]
    stdin = b"\n".join([lines[0], b"jane@example.com card 4242 (not an Airbyte message)", *lines[1:]]) + b"\n"

    done = subprocess.run(
        [sys.executable, str(ROOT / "destination_perly" / "main.py"), "write", "--config", config]
        + ["--catalog", catalog],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )

    assert b"jane@example.com" not in done.stdout + done.stderr
    with sqlite3.connect(db) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM stripe_customers")}
    assert stored == {c["id"] for c in customers}


def test_a_refresh_big_enough_for_the_helper_process_echoes_every_message_once(tmp_path: Path) -> None:
    """The helper process is forked after the states were printed: each is printed once, and the
    customers it evaluated are saved like the others."""
    emulator = Emulator(customers=450, seed=3)
    records = {
        s: [
            {**o, "updated": o.get("created", emulator.now) if s == "events" else emulator.now}
            for o in emulator.objects(s)
        ]
        for s in STREAMS
    }
    db = tmp_path / "perly.db"
    config, catalog = write_files(
        tmp_path,
        {"store": {"store_type": "sqlite", "path": str(db)}, "as_of": "2026-11-01T00:00:00Z"},
        [configured(s) for s in STREAMS],
    )
    stdin = b"\n".join(messages(records)) + b"\n"

    output = cli("write", "--config", config, "--catalog", catalog, stdin=stdin)

    states = [m["state"]["stream"]["stream_descriptor"]["name"] for m in output if m["type"] == "STATE"]
    assert states == list(STREAMS)
    summaries = [m for m in output if m["type"] == "LOG" and "customers recomputed" in m["log"]["message"]]
    assert len(summaries) == 1
    with sqlite3.connect(db) as conn:
        health = conn.execute("SELECT COUNT(*) FROM perly_customer_health").fetchone()[0]
        pending = conn.execute("SELECT COUNT(*) FROM perly_dirty_customers").fetchone()[0]
    assert health >= 450
    assert pending == 0
