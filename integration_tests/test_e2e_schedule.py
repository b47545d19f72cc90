"""The scheduled runner (`perly schedule`, perly_runner/schedule.py): how it drives PyAirbyte.

PyAirbyte is an optional 780 MB extra, so the first tests use a fake of the small surface the runner
touches. The last test runs the real path (real PyAirbyte, real connectors, the emulator) when
PERLY_PYAIRBYTE_PYTHON names the Python of a venv where `perly-stripe[pyairbyte]` is installed (not
editable): scripts/pyairbyte-check.sh sets it up.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from perly_runner import cli, schedule
from perly_runner.pipeline import SyncFailed

SOURCE_CONFIG = {"api_key": "sk_test_perly_demo", "base_url": "http://127.0.0.1:1"}
DESTINATION_CONFIG = {"store": {"store_type": "sqlite", "path": "var/perly.db"}}


class Level(Enum):  # how PyAirbyte's messages carry a log level
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


def log_message(level: Level, text: str) -> SimpleNamespace:
    return SimpleNamespace(type="LOG", log=SimpleNamespace(level=level, message=text))


class FakeAirbyte:
    """Records what the runner asks of PyAirbyte; `write` passes each connector's `messages` through
    its message hook (as PyAirbyte does while it pipes them), then returns a result or raises `fail`."""

    def __init__(
        self, fail: Exception | None = None, messages: dict[str, list[SimpleNamespace]] | None = None
    ) -> None:
        self.calls: dict[str, Any] = {}
        self.fail = fail
        self.messages = messages or {}
        self.hooked: list[Any] = []  # what reached the connectors' own hooks

    def DuckDBCache(self, **kwargs: Any) -> SimpleNamespace:  # noqa: N802 (PyAirbyte's class name)
        self.calls["state_cache"] = kwargs
        return SimpleNamespace(kind="state-cache", **kwargs)

    def get_source(self, name: str, **kwargs: Any) -> SimpleNamespace:
        self.calls["source"] = {"name": name, **kwargs}
        return SimpleNamespace(kind="source", _peek_airbyte_message=self.hooked.append)

    def get_destination(self, name: str, **kwargs: Any) -> SimpleNamespace:
        self.calls["destination"] = {"name": name, **kwargs}
        self.destination = SimpleNamespace(
            kind="destination", write=self._write, _peek_airbyte_message=self.hooked.append
        )
        return self.destination

    def _write(self, source: Any, **kwargs: Any) -> SimpleNamespace:
        self.calls["write"] = {"source": source, **kwargs}
        for connector, name in ((source, "source"), (self.destination, "destination")):
            for message in self.messages.get(name, []):
                connector._peek_airbyte_message(message)
        if self.fail:
            raise self.fail
        return SimpleNamespace(processed_records=42)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """Stand-ins for the installed console scripts (the runner only checks they are executable)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("source-perly-stripe", "destination-perly"):
        script = directory / name
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    return directory


def settings(bin_dir: Path, tmp_path: Path, full_refresh: bool = False) -> Any:
    return schedule.Settings(SOURCE_CONFIG, DESTINATION_CONFIG, bin_dir, tmp_path / "state", full_refresh)


def test_runner_passes_records_and_state_straight_through_and_keeps_state_on_disk(
    bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ab = FakeAirbyte()

    assert schedule.sync(ab, settings(bin_dir, tmp_path)) == 0

    source, destination, write = ab.calls["source"], ab.calls["destination"], ab.calls["write"]
    assert source["local_executable"] == str(bin_dir / "source-perly-stripe")
    assert Path(source["local_executable"]).is_absolute()
    assert destination["local_executable"] == str(bin_dir / "destination-perly")
    assert (source["config"], destination["config"]) == (SOURCE_CONFIG, DESTINATION_CONFIG)
    assert source["streams"] == "*"
    assert write["cache"] is False  # no local copy of the records: straight to the destination
    assert write["state_cache"].kind == "state-cache"
    assert write["force_full_refresh"] is False
    assert ab.calls["state_cache"]["db_path"] == tmp_path / "state" / "state.duckdb"
    assert "42 records written" in capsys.readouterr().out


def test_the_connectors_warnings_and_errors_are_printed_as_they_come_and_their_info_is_not(
    bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skipped = "coupons: skipped: the key cannot read it (needs rak_coupon_read)"
    ab = FakeAirbyte(
        messages={
            "source": [
                log_message(Level.INFO, "customers: done"),
                log_message(Level.WARN, skipped + "\nmore"),
            ],
            "destination": [log_message(Level.ERROR, "record 7 skipped: not an object")],
        }
    )

    assert schedule.sync(ab, settings(bin_dir, tmp_path)) == 0

    out = capsys.readouterr().out
    assert f"perly schedule: source: {skipped}\n" in out
    assert "perly schedule: destination: record 7 skipped: not an object\n" in out
    assert "customers: done" not in out
    assert len(ab.hooked) == 3  # PyAirbyte's own handling of each message is kept


def test_full_refresh_flag_ignores_saved_state(bin_dir: Path, tmp_path: Path) -> None:
    ab = FakeAirbyte()

    schedule.sync(ab, settings(bin_dir, tmp_path, full_refresh=True))

    assert ab.calls["write"]["force_full_refresh"] is True


def test_failed_run_exits_non_zero_and_says_the_state_is_kept_without_leaking_the_key(
    bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ab = FakeAirbyte(fail=RuntimeError("destination exited with 1"))

    assert schedule.sync(ab, settings(bin_dir, tmp_path)) == 1

    out = capsys.readouterr().out
    assert "sync failed, committed state kept for the next run" in out
    assert "sk_test_perly_demo" not in out


def test_run_is_skipped_while_another_holds_the_lock(
    bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ab = FakeAirbyte()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with open(state_dir / "perly-sync.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert schedule.sync(ab, settings(bin_dir, tmp_path)) == 0

    assert "write" not in ab.calls
    assert "another sync is still running" in capsys.readouterr().out


def test_missing_connector_is_reported_before_anything_runs(tmp_path: Path) -> None:
    ab = FakeAirbyte()

    with pytest.raises(SyncFailed, match="source-perly-stripe not found"):
        schedule.sync(ab, settings(tmp_path / "nowhere", tmp_path))
    assert ab.calls == {}


def test_pyairbyte_is_imported_in_offline_mode(tmp_path: Path) -> None:
    # A stand-in `airbyte` package that records the environment it was imported in.
    (tmp_path / "airbyte").mkdir()
    (tmp_path / "airbyte" / "__init__.py").write_text(
        "import os\nOFFLINE_AT_IMPORT = os.environ.get('AIRBYTE_OFFLINE_MODE')\n"
    )
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from perly_runner import schedule
        print(schedule.load_airbyte().OFFLINE_AT_IMPORT)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "AIRBYTE_OFFLINE_MODE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)

    assert out.stdout.strip() == "1"


def test_without_pyairbyte_schedule_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "airbyte", None)  # `import airbyte` raises ImportError
    monkeypatch.setenv("AIRBYTE_OFFLINE_MODE", "1")
    source, destination = tmp_path / "source.json", tmp_path / "destination.json"
    source.write_text(json.dumps(SOURCE_CONFIG))
    destination.write_text(json.dumps(DESTINATION_CONFIG))

    code = cli.main(["schedule", "--source-config", str(source), "--destination-config", str(destination)])

    err = capsys.readouterr().err
    assert code == 1
    assert "PyAirbyte is not installed" in err
    assert "pip install 'perly-stripe[pyairbyte]'" in err
    assert "sk_test_perly_demo" not in err


# ---------------------------------------------------------------------------------------------------
# The real path: PyAirbyte itself, the installed connectors, the emulator.

PYAIRBYTE_PYTHON = os.environ.get("PERLY_PYAIRBYTE_PYTHON")
real_pyairbyte = pytest.mark.skipif(
    not PYAIRBYTE_PYTHON, reason="PERLY_PYAIRBYTE_PYTHON not set: run scripts/pyairbyte-check.sh"
)


def run_schedule(tmp_path: Path, source_config: dict[str, Any], destination_config: dict[str, Any]) -> str:
    """The installed `perly schedule` of that venv, from another directory, without this tree on the
    path; the state directory is tmp_path/state. Returns its output, after checking it succeeded."""
    paths = {name: tmp_path / f"{name}.json" for name in ("source", "destination")}
    paths["source"].write_text(json.dumps(source_config))
    paths["destination"].write_text(json.dumps(destination_config))
    command = [str(Path(str(PYAIRBYTE_PYTHON)).parent / "perly"), "schedule"]
    command += ["--source-config", str(paths["source"]), "--state-dir", str(tmp_path / "state")]
    command += ["--destination-config", str(paths["destination"])]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert source_config["api_key"] not in done.stdout + done.stderr
    return done.stdout


@pytest.mark.emulator
@pytest.mark.slow
@real_pyairbyte
def test_real_pyairbyte_runs_are_incremental_and_keep_state_between_runs(tmp_path: Path) -> None:
    from integration_tests.demo import emulator_source_config, iso
    from integration_tests.stripe_emulator import Emulator

    store = tmp_path / "perly.db"
    with Emulator(customers=60, seed=7) as emulator:
        source_config = emulator_source_config(emulator.url)

        def run() -> int:
            destination_config = {
                "store": {"store_type": "sqlite", "path": str(store)},
                "as_of": iso(emulator.now),
            }
            return int(
                run_schedule(tmp_path, source_config, destination_config)
                .split("sync finished: ")[1]
                .split()[0]
            )

        first = run()
        db = sqlite3.connect(store)
        stored_customers = db.execute("SELECT count(*) FROM stripe_customers WHERE deleted = 0").fetchone()[0]
        assert stored_customers == len(emulator.objects("customers"))
        emulator.advance(days=3)
        second = run()
        health_as_of = db.execute("SELECT max(as_of) FROM perly_customer_health").fetchone()[0]

    assert (tmp_path / "state" / "state.duckdb").exists()
    assert 0 < second < first  # the second run started from the state saved by the first
    assert health_as_of.startswith(iso(emulator.now)[:10])


@pytest.mark.emulator
@pytest.mark.slow
@real_pyairbyte
def test_real_pyairbyte_run_with_the_recommended_key_says_which_streams_it_skips_and_why(
    tmp_path: Path,
) -> None:
    from integration_tests.stripe_emulator import Emulator

    with Emulator(customers=20, seed=7) as emulator:
        source_config = {"api_key": "rk_test_perly_billing", "base_url": emulator.url}
        destination_config = {"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}}
        out = run_schedule(tmp_path, source_config, destination_config)

    # PyAirbyte itself keeps the connectors' warnings in its log files only.
    notices = [line for line in out.splitlines() if "perly schedule: source: " in line]
    assert any("coupons" in line and "rak_coupon_read" in line for line in notices), out[-3000:]
