"""Destination throughput and memory: the emulator's default book piped through the writer into SQLite.

    python benchmarks/bench_destination.py [--customers 2000] [--scales 1,10] [--postgres-dsn DSN]

For each scale, one process builds the book and serialises its records as Airbyte RECORD lines (a
STATE line every 500 records of a stream, as a source pages) into a file; then another process, which
never holds the book (so its peak RSS is the destination's), reads that file as stdin is read: by the
destination's own input path
(`--parser destination`: parsed in its input reader process when there is a second core;
`--parser inline` parses in the writer's process, `--parser cdk` uses the CDK's model path), written
by `DestinationPerly.write` into a fresh SQLite file, and health is recomputed for every customer at
the end (the real engine). Scale N replays the book N times with ids marked by copy, so the store really
holds N times the objects and customers. Prints records/s (wall and per CPU second: it counts the
main process and its helper processes, whose share is shown apart; PostgreSQL's own server is not
counted, its CPU seconds are shown apart when it runs on this machine) and peak memory, then each
figure against its target (issue 13): >= 20,000 records/s including health at every scale (the
issue asks it of SQLite at 1x and 10x, of PostgreSQL at 1x), and peak RSS at most x1.1 from the
smallest to the largest scale, on either backend (`--postgres-dsn`, e.g. under
`scripts/with-postgres.sh`: the DSN is in PERLY_TEST_POSTGRES_DSN).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STREAMS = ("products", "prices", "coupons", "customers", "subscriptions", "invoices", "charges", "events")
PER_ACCOUNT = {"products", "prices", "coupons"}  # one account: not copied per replay
# Rendered as the source lists them (its `expand[]` in source_perly_stripe/streams.py).
EXPANDED = {"subscriptions": "discounts", "prices": "tiers"}
STATE_EVERY = 500
TARGET_RECORDS_PER_S = 20_000
# Peak memory may grow this much from the smallest to the largest scale and still count as flat
# (buffers, batches and refresh chunks are bounded; nothing grows with the book).
FLAT_MEMORY_GROWTH = 1.1
# How long a backend that just exited may take to be reaped (see run_one; after the wall clock).
SERVER_REAP_SECONDS = 0.5


def load_book(customers: int) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    from integration_tests.stripe_emulator import Emulator

    emulator = Emulator(customers=customers)
    return emulator.now, {s: emulator.objects(s, variant=EXPANDED.get(s, "")) for s in STREAMS}


def copied_id(object_id: str, copy: int) -> str:
    """A new id of the same kind, as random as Stripe's: the copies of one customer are neither
    neighbours in id order (each refresh chunk holds as varied a mix at scale N as at scale 1) nor
    grouped (writes land all over the tables, as a real account's do)."""
    head, _, _ = object_id.partition("_")
    digest = hashlib.blake2b(f"{object_id}:{copy}".encode(), digest_size=9).hexdigest()
    return f"{head}_{digest}"


def copied(obj: dict[str, Any], copy: int) -> dict[str, Any]:
    """The object as if it belonged to another customer of the same account (copy 0 is unchanged)."""
    if copy == 0:
        return obj
    out = dict(obj)
    out["id"] = copied_id(str(obj["id"]), copy)
    if isinstance(obj.get("customer"), str):
        out["customer"] = copied_id(obj["customer"], copy)
    data = obj.get("data")
    if obj.get("object") == "event" and isinstance(data, dict) and isinstance(data.get("object"), dict):
        inner = dict(data["object"])
        inner["id"] = copied_id(str(inner.get("id")), copy)
        if isinstance(inner.get("customer"), str):
            inner["customer"] = copied_id(inner["customer"], copy)
        out["data"] = {**data, "object": inner}
    return out


def lines(now: int, book: dict[str, list[dict[str, Any]]], scale: int) -> Iterator[bytes]:
    """Airbyte RECORD/STATE lines, generated lazily so the input itself holds no memory."""
    for copy in range(scale):
        for stream in STREAMS:
            if copy and stream in PER_ACCOUNT:
                continue
            for n, obj in enumerate(book[stream], start=1):
                data = copied(obj, copy)
                data["updated"] = data.get("created", now) if stream == "events" else now
                yield orjson.dumps(
                    {"type": "RECORD", "record": {"stream": stream, "data": data, "emitted_at": 0}}
                )
                if n % STATE_EVERY == 0:
                    state = {"stream_descriptor": {"name": stream}, "stream_state": {"copy": copy, "n": n}}
                    yield orjson.dumps({"type": "STATE", "state": {"type": "STREAM", "stream": state}})


def catalog() -> Any:
    from airbyte_cdk.models import ConfiguredAirbyteCatalogSerializer

    streams = [
        {
            "stream": {"name": s, "json_schema": {"type": "object"}, "supported_sync_modes": ["incremental"]},
            "sync_mode": "incremental",
            "destination_sync_mode": "append_dedup",
            "cursor_field": ["updated"],
            "primary_key": [["id"]],
        }
        for s in STREAMS
    ]
    return ConfiguredAirbyteCatalogSerializer.load({"streams": streams})


def json_speed(book: dict[str, list[dict[str, Any]]]) -> float:
    """This machine's orjson parse speed on the book's invoices: a yardstick for the figures."""
    blob = orjson.dumps(book["invoices"][:2000])
    gc.disable()  # as the refresh does while parsing (the book held here would be rescanned)
    started = time.perf_counter()
    for _ in range(3):
        orjson.loads(blob)
    elapsed = time.perf_counter() - started
    gc.enable()
    return round(3 * len(blob) / 1e6 / elapsed, 1)


def store_config(tmp: str, postgres_dsn: str | None) -> dict[str, Any]:
    if not postgres_dsn:
        return {"store_type": "sqlite", "path": f"{tmp}/perly.db"}
    from integration_tests.postgres import store_settings

    return store_settings(postgres_dsn, f"perly_bench_{int(time.time())}")


def drop_schema(postgres_dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def server_cpu(postgres_dsn: str) -> float | None:
    """CPU seconds the PostgreSQL server has used so far (its postmaster and every process it
    started, running or ended), when it runs on this machine; None otherwise."""
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        backend = conn.info.backend_pid

    def stat(pid: int | str) -> list[str]:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces

    try:
        postmaster = int(stat(backend)[1])
        ticks = sum(int(v) for v in stat(postmaster)[11:15])  # its own and its ended children's
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with suppress(OSError):
                fields = stat(pid)
                if int(fields[1]) == postmaster:
                    ticks += sum(int(v) for v in fields[11:15])
    except (OSError, ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_input(customers: int, scale: int, input_path: Path) -> dict[str, Any]:
    """Writes the input file; returns what the measuring process needs to know about it."""
    now, book = load_book(customers)
    records = 0
    with input_path.open("wb") as input_file:
        for line in lines(now, book, scale):
            records += line.startswith(b'{"type":"RECORD"')
            input_file.write(line + b"\n")
    return {"now": now, "records": records, "json_parse_mb_per_s": json_speed(book)}


def run_one(
    made: dict[str, Any],
    input_path: Path,
    trace: bool,
    postgres_dsn: str | None = None,
    parser: str = "destination",
) -> dict[str, Any]:
    from airbyte_cdk.models import AirbyteMessageSerializer, Type

    from destination_perly.destination import DestinationPerly

    now, records = made["now"], made["records"]
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    destination = DestinationPerly(input_reader=parser == "destination")

    def messages(input_file: IO[bytes]) -> Iterable[Any]:
        if parser == "cdk":
            return (AirbyteMessageSerializer.load(orjson.loads(line)) for line in input_file)
        return destination._parse_input_stream(input_file)  # lines, as stdin gives

    with tempfile.TemporaryDirectory() as tmp:
        input_mb = input_path.stat().st_size / 1e6
        config = {"store": store_config(tmp, postgres_dsn), "as_of": now}
        if trace:
            tracemalloc.start()
        started_server = server_cpu(postgres_dsn) if postgres_dsn else None
        started = time.perf_counter()
        started_cpu = time.process_time()
        started_children = _children_cpu()
        states = 0
        with input_path.open("rb") as input_file:
            for out in destination.write(config, catalog(), messages(input_file)):
                if out.type == Type.STATE:
                    states += 1
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
        helper_cpu = _children_cpu() - started_children  # the input reader and refresh helper, once joined
        if postgres_dsn:
            # The writer's backend has just exited: its CPU shows nowhere until the postmaster has
            # reaped it (read at once, the figure missed most of the server's work in 2 runs of 3).
            time.sleep(SERVER_REAP_SECONDS)
        ended_server = server_cpu(postgres_dsn) if postgres_dsn else None
        assert destination.last_writer is not None
        stats = destination.last_writer.stats
        traced_peak = tracemalloc.get_traced_memory()[1] if trace else None
        if postgres_dsn:
            drop_schema(postgres_dsn, config["store"]["schema"])
            db_mb = 0.0
        else:
            db_mb = Path(f"{tmp}/perly.db").stat().st_size / 1e6
    return {
        "records": records,
        "states": states,
        "seconds": round(elapsed, 2),
        "records_per_s": round(records / elapsed),
        "input_mb": round(input_mb, 1),
        "cpu_seconds": round(cpu, 2),
        "records_per_cpu_s": round(records / (cpu + helper_cpu)),
        "helper_cpu_seconds": round(helper_cpu, 2),
        "server_cpu_seconds": (
            round(ended_server - started_server, 2)
            if started_server is not None and ended_server is not None
            else None
        ),
        "health_seconds": round(stats.refresh_seconds, 2),
        "customers_recomputed": stats.refreshed,
        "write_only_records_per_s": round(records / (elapsed - stats.refresh_seconds)),
        "json_parse_mb_per_s": made["json_parse_mb_per_s"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_write_mb": round(baseline_rss / 1024, 1),
        "helper_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "traced_peak_mb": round(traced_peak / 1e6, 1) if traced_peak is not None else None,
        "db_mb": round(db_mb, 1),
    }


def last_json_line(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--scales", default="1,10")
    parser.add_argument("--tracemalloc", action="store_true", help="also report Python heap peak (slower)")
    parser.add_argument("--postgres-dsn", help="write to this PostgreSQL server instead of SQLite")
    parser.add_argument("--parser", choices=("destination", "inline", "cdk"), default="destination")
    parser.add_argument("--make-input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--made", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_input is not None:
        print(json.dumps(make_input(args.customers, args.scale, args.make_input)))
        return
    if args.measure is not None:
        result = run_one(args.made, args.measure, args.tracemalloc, args.postgres_dsn, args.parser)
        print(json.dumps(result))
        return
    backend = "PostgreSQL" if args.postgres_dsn else "SQLite"
    print(
        f"destination benchmark: emulator book of {args.customers} customers, {backend}, health included,"
        f" stdin parser: {args.parser}"
    )
    header = (
        "scale",
        "records",
        "seconds",
        "records/s",
        "cpu s",
        "helper cpu s",
        "rec/cpu-s",
        "health s",
        "write-only rec/s",
        "peak RSS MB",
        "RSS pre",
    )
    print(" ".join(f"{h:>{max(len(h), 8)}}" for h in header))
    results = []
    scales = [int(s) for s in args.scales.split(",")]
    for scale in scales:
        with tempfile.TemporaryDirectory() as tmp:
            input_path = Path(tmp) / "input.jsonl"
            made = last_json_line(
                [sys.executable, __file__, "--customers", str(args.customers), "--scale", str(scale)]
                + ["--make-input", str(input_path)]
            )
            command = [sys.executable, __file__, "--measure", str(input_path), "--made", json.dumps(made)]
            command += ["--parser", args.parser]
            if args.tracemalloc:
                command.append("--tracemalloc")
            if args.postgres_dsn:
                command += ["--postgres-dsn", args.postgres_dsn]
            r = last_json_line(command)
        results.append(r)
        values = (
            scale,
            r["records"],
            r["seconds"],
            r["records_per_s"],
            r["cpu_seconds"],
            r["helper_cpu_seconds"],
            r["records_per_cpu_s"],
            r["health_seconds"],
            r["write_only_records_per_s"],
            r["peak_rss_mb"],
            r["rss_before_write_mb"],
        )
        print(" ".join(f"{v:>{max(len(h), 8)}}" for h, v in zip(header, values, strict=True)))
        print(
            f"      {r['customers_recomputed']} customers recomputed; "
            + f"input {r['input_mb']} MB; largest helper process peak RSS {r['helper_peak_rss_mb']} MB; "
            + (f"SQLite file {r['db_mb']} MB; " if r["db_mb"] else "")
            + (f"PostgreSQL server CPU {r['server_cpu_seconds']} s; " if r["server_cpu_seconds"] else "")
            + f"this machine parses JSON at {r['json_parse_mb_per_s']} MB/s"
            + (f"; traced heap peak {r['traced_peak_mb']} MB" if r["traced_peak_mb"] is not None else "")
        )
    print("targets:")
    for scale, r in zip(scales, results, strict=True):
        verdict = met(r["records_per_s"] >= TARGET_RECORDS_PER_S)
        print(
            f"  {backend} {scale}x: {r['records_per_s']:,} records/s including health"
            f" (health {r['health_seconds']} s) against >= {TARGET_RECORDS_PER_S:,}: {verdict}"
        )
    if len(results) > 1:
        smallest, largest = results[0]["peak_rss_mb"], results[-1]["peak_rss_mb"]
        growth = largest / smallest
        print(
            f"  memory flat in scale: peak RSS {smallest} MB at {scales[0]}x, {largest} MB at {scales[-1]}x"
            f" (x{growth:.2f}) against <= x{FLAT_MEMORY_GROWTH}: {met(growth <= FLAT_MEMORY_GROWTH)}"
        )


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    main()
