"""The pipe `perly sync`, `make demo` and the end-to-end tests run (perly_runner/pipeline.py), with
stand-in connectors: which streams it asks for, that it keeps only the state the destination echoed,
and that the connectors' copies of the configs (they hold the key) do not outlive the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from integration_tests import demo
from perly_runner import cli, pipeline


def stream(name: str, modes: list[str], cursor: str = "updated") -> dict[str, Any]:
    return {
        "name": name,
        "json_schema": {},
        "supported_sync_modes": modes,
        "source_defined_cursor": True,
        "default_cursor_field": [cursor],
        "source_defined_primary_key": [["id"]],
    }


CATALOG = {
    "streams": [
        stream("customers", ["full_refresh", "incremental"]),
        stream("events", ["full_refresh", "incremental"], cursor="created"),
        stream("balance", ["full_refresh"]),
    ]
}


def test_catalog_asks_incremental_dedup_where_supported_and_overwrite_elsewhere() -> None:
    configured = {s["stream"]["name"]: s for s in pipeline.configured_catalog(CATALOG)["streams"]}

    assert configured["customers"]["sync_mode"] == "incremental"
    assert configured["customers"]["destination_sync_mode"] == "append_dedup"
    assert configured["customers"]["primary_key"] == [["id"]]
    assert configured["events"]["cursor_field"] == ["created"]
    assert (configured["balance"]["sync_mode"], configured["balance"]["destination_sync_mode"]) == (
        "full_refresh",
        "overwrite",
    )
    assert "cursor_field" not in configured["balance"]


def test_catalog_can_be_limited_to_named_streams() -> None:
    names = [s["stream"]["name"] for s in pipeline.configured_catalog(CATALOG, ["events"])["streams"]]

    assert names == ["events"]


def stream_state(name: str, cursor: int) -> dict[str, Any]:
    return {
        "type": "STREAM",
        "stream": {"stream_descriptor": {"name": name}, "stream_state": {"updated": cursor}},
    }


def test_ledger_keeps_the_latest_state_per_stream_and_saves_it(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ledger = pipeline.StateLedger(path, [stream_state("customers", 1)])

    ledger.acknowledge(stream_state("invoices", 5))
    ledger.acknowledge(stream_state("customers", 9))

    assert json.loads(path.read_text()) == [stream_state("customers", 9), stream_state("invoices", 5)]
    assert pipeline.load_state(path) == ledger.messages()


def test_ledger_global_state_replaces_everything_before_it(tmp_path: Path) -> None:
    ledger = pipeline.StateLedger(None, [stream_state("customers", 1)])
    global_state = {"type": "GLOBAL", "global": {"shared_state": {"t": 3}, "stream_states": []}}

    ledger.acknowledge(global_state)

    assert ledger.messages() == [global_state]


# Stand-in connectors: the source emits two records, each followed by a state (cursor 111, then 222);
# the destination echoes the first state, then fails on the second record (a crash after one commit).
FAKE_SOURCE = """
import json, sys
for n in (1, 2):
    record = {"stream": "customers", "data": {"id": n}, "emitted_at": 0}
    print(json.dumps({"type": "RECORD", "record": record}))
    state = {"type": "STREAM", "stream": {"stream_descriptor": {"name": "customers"},
                                          "stream_state": {"updated": 111 * n}}}
    print(json.dumps({"type": "STATE", "state": state}))
"""
FAKE_DESTINATION = """
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "RECORD" and message["record"]["data"]["id"] == 2:
        print(json.dumps({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 0,
                          "error": {"message": "store is full"}}}))
        sys.exit(1)
    if message["type"] == "STATE":
        print(line, end="", flush=True)
"""


# A source with far more to say than a pipe holds: it only stops when it is stopped.
ENDLESS_SOURCE = """
import json, itertools
for n in itertools.count(1):
    record = {"stream": "customers", "data": {"id": n}, "emitted_at": 0}
    print(json.dumps({"type": "RECORD", "record": record}))
"""


def use_connectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, destination: str) -> None:
    scripts = {}
    for name, body in (("source-perly-stripe", source), ("destination-perly", destination)):
        path = tmp_path / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
        scripts[name] = str(path)
    monkeypatch.setattr(pipeline, "executable", scripts.__getitem__)


@pytest.fixture
def fake_connectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_connectors(tmp_path, monkeypatch, FAKE_SOURCE, FAKE_DESTINATION)


def failure_of_a_sync_that_must_end(tmp_path: Path, hang: str) -> BaseException:
    """run_sync of the customers stream in a thread: the error it ended with. A sync still running
    after a minute has hung (`hang` says how); the connectors here end in well under a second."""
    catalog = pipeline.configured_catalog(CATALOG, ["customers"])
    outcome: list[BaseException] = []

    def sync() -> None:
        try:
            pipeline.run_sync(
                tmp_path / "run", {"api_key": "sk_test_x"}, {}, catalog, tmp_path / "state.json"
            )
        except BaseException as error:
            outcome.append(error)

    runner = threading.Thread(target=sync, daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), f"the sync hung: {hang}"
    return outcome[0]


def test_when_the_destination_dies_then_the_source_is_stopped_and_the_destinations_error_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connectors(tmp_path, monkeypatch, ENDLESS_SOURCE, FAKE_DESTINATION)

    failure = failure_of_a_sync_that_must_end(tmp_path, "the source was left blocked on a full pipe")

    assert isinstance(failure, pipeline.SyncFailed)
    assert "destination exited with 1: store is full" in str(failure)


# A source still waiting for its first answer (a slow or unreachable Stripe): it writes nothing.
SILENT_SOURCE = """
import time
time.sleep(3600)
"""
# A destination that refuses its config at once, saying so as a log line and as its error trace.
REFUSING_DESTINATION = """
import json
for message in ({"type": "LOG", "log": {"level": "FATAL", "message": "store must be an object"}},
                {"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 0,
                                            "error": {"message": "store must be an object"}}}):
    print(json.dumps(message))
raise SystemExit(1)
"""


def test_when_the_destination_fails_before_any_record_then_a_silent_source_is_stopped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connectors(tmp_path, monkeypatch, SILENT_SOURCE, REFUSING_DESTINATION)

    failure = failure_of_a_sync_that_must_end(tmp_path, "it waited for a source with nowhere to write")

    assert str(failure) == "destination exited with 1: store must be an object"


@pytest.mark.usefixtures("fake_connectors")
def test_only_state_the_destination_echoed_is_kept_and_its_error_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    catalog = pipeline.configured_catalog(CATALOG, ["customers"])

    with pytest.raises(pipeline.SyncFailed, match="destination exited with 1: store is full"):
        pipeline.run_sync(tmp_path / "run", {"api_key": "sk_test_x"}, {}, catalog, state)

    assert json.loads(state.read_text()) == [stream_state("customers", 111)]


# A source that notes the mode of the config file it was given, then ends (the sync succeeds).
MODE_NOTING_SOURCE = """
import os, stat, sys
config = sys.argv[sys.argv.index("--config") + 1]
with open(os.path.join(os.path.dirname(config), "mode-seen"), "w") as out:
    out.write(oct(stat.S_IMODE(os.stat(config).st_mode)))
"""


@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
def test_connectors_config_copies_are_owner_only_and_removed_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    source = MODE_NOTING_SOURCE + ("\nsys.exit(1)\n" if outcome == "fails" else "")
    use_connectors(tmp_path, monkeypatch, source, FAKE_DESTINATION)
    workdir = tmp_path / "run"

    try:
        pipeline.run_sync(workdir, {"api_key": "sk_test_secret"}, {}, pipeline.configured_catalog(CATALOG))
    except pipeline.SyncFailed:
        assert outcome == "fails"

    assert (workdir / "mode-seen").read_text() == "0o600"
    assert not (workdir / "source_config.json").exists()
    assert not (workdir / "destination_config.json").exists()
    assert "sk_test_secret" not in "".join(p.read_text() for p in workdir.iterdir())


@pytest.mark.emulator
@pytest.mark.slow
def test_sync_command_runs_full_then_incremental_from_saved_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from integration_tests.stripe_emulator import Emulator

    with Emulator(customers=40, seed=3) as emulator:
        source = pipeline.write_json(tmp_path / "source.json", demo.emulator_source_config(emulator.url))
        destination = pipeline.write_json(
            tmp_path / "destination.json",
            {
                "store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")},
                "as_of": demo.iso(emulator.now),
            },
        )
        command = ["sync", "--source-config", str(source), "--destination-config", str(destination)]
        command += ["--state", str(tmp_path / "state.json"), "--html", str(tmp_path / "report.html")]

        assert cli.main(command) == 0
        first = capsys.readouterr().out
        emulator.advance(days=2)
        assert cli.main(command) == 0
        second = capsys.readouterr().out

    assert "Sync (full)" in first
    assert "Sync (incremental, from the saved state)" in second
    assert "At-risk customers (not churned, risk score above 0):" in second
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert demo.DEMO_KEY not in first + second
    assert not (tmp_path / "sync-run" / "source_config.json").exists()


@pytest.mark.emulator
def test_sync_command_shows_the_connectors_warnings_as_they_come(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the recommended key, each stream skipped for a missing permission is told, and so is a
    store made owner-only: `perly sync` used to keep the connectors' warnings in its run files."""
    from integration_tests.stripe_emulator import Emulator

    store = tmp_path / "perly.db"
    store.touch(mode=0o644)
    store.chmod(0o644)
    with Emulator(customers=20, seed=5) as emulator:
        source_config = {**demo.emulator_source_config(emulator.url), "api_key": "rk_test_perly_billing"}
        source = pipeline.write_json(tmp_path / "source.json", source_config)
        destination = pipeline.write_json(
            tmp_path / "destination.json",
            {"store": {"store_type": "sqlite", "path": str(store)}, "as_of": demo.iso(emulator.now)},
        )
        command = ["sync", "--source-config", str(source), "--destination-config", str(destination)]
        code = cli.main([*command, "--state", str(tmp_path / "state.json")])

    err = capsys.readouterr().err
    assert code == 0
    for stream, permission in [("events", "rak_event_read"), ("coupons", "rak_coupon_read")]:
        assert f"source: {stream}: skipped: the API key lacks the '{permission}' permission" in err
    assert f"destination: {store} was open to other users (mode 0644)" in err
    assert "rk_test_perly_billing" not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ('{"api_key": "sk_test_secret1234",', "is not valid JSON"),
        ("[1]", "JSON object"),
    ],
    ids=["missing", "broken", "not-an-object"],
)
def test_sync_command_with_an_unusable_config_says_why_without_a_traceback_or_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    source = tmp_path / "source.json"
    if content is not None:
        source.write_text(content)

    code = cli.main(["sync", "--source-config", str(source), "--destination-config", str(source)])

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("perly sync failed: ")
    assert expected in err
    assert "Traceback" not in err
    assert "sk_test_secret1234" not in err


def test_sync_command_is_skipped_while_another_sync_with_the_same_state_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_connectors(tmp_path, monkeypatch, FAKE_SOURCE, FAKE_DESTINATION)  # a run would fail: no catalog
    config = tmp_path / "config.json"
    config.write_text('{"api_key": "sk_test_x"}')
    state = tmp_path / "var" / "state.json"
    command = [
        "sync",
        "--source-config",
        str(config),
        "--destination-config",
        str(config),
        "--state",
        str(state),
    ]

    with pipeline.exclusive_run(tmp_path / "var" / "state.json.lock") as acquired:  # the run still going
        assert acquired
        code = cli.main(command)

    assert code == 0
    assert f"another sync with the state {state} is still running; skipped" in capsys.readouterr().out
    assert not state.exists()
    assert cli.main(command) == 1  # once it has ended, a run goes ahead (and meets the stand-ins)


@pytest.mark.emulator
@pytest.mark.slow
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_sync_command_whose_output_reader_goes_away_mid_sync_still_completes_the_sync(
    tmp_path: Path, unbuffered: bool
) -> None:
    """`perly sync ... 2>&1 | head -1`: the reader goes once the first line is out, while the sync
    still runs. The progress lines printed after that used to fail the sync (the relay took the
    closed pipe for a dead destination and stopped the source)."""
    from integration_tests.stripe_emulator import Emulator

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    # Slow answers: the sync lasts a few seconds, long enough for progress lines after the first.
    with Emulator(customers=40, seed=3, latency_ms=150) as emulator:
        source = pipeline.write_json(tmp_path / "source.json", demo.emulator_source_config(emulator.url))
        destination = pipeline.write_json(
            tmp_path / "destination.json",
            {
                "store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")},
                "as_of": demo.iso(emulator.now),
            },
        )
        run = [sys.executable, "-c", "import sys; from perly_runner.cli import main; sys.exit(main())"]
        run += ["sync", "--source-config", str(source), "--destination-config", str(destination)]
        run += ["--state", str(tmp_path / "state.json")]
        perly = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert perly.stdout is not None
        first_line = perly.stdout.readline()
        perly.stdout.close()
        code = perly.wait(timeout=120)

    assert first_line.startswith(b"Sync (full)")
    assert code == 0
    saved = {s["stream"]["stream_descriptor"]["name"] for s in pipeline.load_state(tmp_path / "state.json")}
    assert saved >= {"customers", "subscriptions", "invoices", "charges", "events"}
