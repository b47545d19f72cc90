"""Files holding customer data or keys are readable by their owner only, whatever the umask: the
SQLite store with its -wal and -shm, the directories created for it, the HTML report, and the run's
copies of the configs (which a sync also removes when it ends). A store or page an older version left
readable by others is made owner-only, with a notice, by whichever part opens or rewrites it next."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from airbyte_cdk.models import Status

from destination_perly.destination import DestinationPerly
from destination_perly.report import main as report_main
from destination_perly.store.sqlite import SqliteStore
from integration_tests.demo import emulator_source_config, start_receiver, stop_receiver
from integration_tests.report_store import write_store
from integration_tests.stripe_emulator import Emulator
from perly_runner.pipeline import configured_catalog, discover, run_sync, write_json


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """A umask that would leave every file world-readable: the modes below are the code's own."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_sqlite_store_and_its_wal_and_shm_are_owner_only_in_owner_only_directories(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "dirs" / "perly.db"

    store = SqliteStore(path)
    try:
        store.ensure_schema()  # writes: the -wal and -shm files exist while the store is open
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()
    assert mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "new" / "dirs") == 0o700


@pytest.fixture
def old_store(tmp_path: Path) -> Iterator[Path]:
    """A store as a version before owner-only files left it: 0644, with its -wal and -shm (held open by
    another reader, as while a sync runs)."""
    path = write_store(tmp_path / "perly.db")
    reader = sqlite3.connect(path)
    reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
    for file in store_files(path):
        file.chmod(0o644)
    try:
        yield path
    finally:
        reader.close()


def store_files(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def notices(path: Path) -> list[str]:
    return [
        f"{file} was open to other users (mode 0644): it is owner-only now (0600)"
        for file in store_files(path)
    ]


def test_a_store_left_readable_by_an_older_version_is_made_owner_only_by_the_destination_with_a_notice(
    old_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"store": {"store_type": "sqlite", "path": str(old_store)}}

    status = DestinationPerly().check(logging.getLogger("airbyte"), config)

    assert status.status == Status.SUCCEEDED, status.message
    assert {f.name: mode(f) for f in store_files(old_store)} == {
        f.name: 0o600 for f in store_files(old_store)
    }
    assert [r.getMessage() for r in caplog.records if r.name == "perly.files"] == notices(old_store)


def test_a_store_left_readable_by_an_older_version_is_made_owner_only_by_the_report_saying_so(
    old_store: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "destination_perly.report", "--db", str(old_store)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == notices(old_store)
    assert {f.name: mode(f) for f in store_files(old_store)} == {
        f.name: 0o600 for f in store_files(old_store)
    }


@pytest.mark.emulator  # a server on 127.0.0.1, like the other receiver tests
def test_a_store_left_readable_by_an_older_version_is_made_owner_only_by_the_webhook_receiver(
    old_store: Path, tmp_path: Path
) -> None:
    config = tmp_path / "destination.json"
    config.write_text(json.dumps({"store": {"store_type": "sqlite", "path": str(old_store)}}))
    log = tmp_path / "receiver.log"

    process, _ = start_receiver(config, log, "whsec_test_private_files", timeout_s=30)
    stop_receiver(process)

    assert mode(old_store) == 0o600
    assert f"perly.files: {notices(old_store)[0]}" in log.read_text()
    assert "whsec_test_private_files" not in log.read_text()


def test_a_store_owned_by_another_user_is_left_as_it_is_with_a_warning(
    old_store: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: old_store.stat().st_uid + 1)

    SqliteStore(old_store, read_only=True).close()

    assert mode(old_store) == 0o644
    assert f"{old_store} is open to other users (mode 0644) but owned by another user: left as it is" in [
        r.getMessage() for r in caplog.records
    ]


def test_a_store_whose_mode_cannot_be_changed_is_opened_anyway_with_a_warning(
    old_store: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)

    store = SqliteStore(old_store)
    try:
        assert store.query("SELECT count(*) AS n FROM perly_customer_health")[0]["n"] > 0
    finally:
        store.close()
    assert mode(old_store) == 0o644
    assert (
        f"{old_store} is open to other users (mode 0644) and could not be made owner-only: "
        "Operation not permitted"
    ) in [r.getMessage() for r in caplog.records]


def test_the_html_report_is_owner_only_even_over_a_world_readable_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = write_store(tmp_path / "perly.db")
    page = tmp_path / "report.html"
    page.write_text("an older page")
    page.chmod(0o644)

    assert report_main(["--db", str(store), "--html", str(page)]) == 0

    assert mode(page) == 0o600
    assert "<html" in page.read_text()
    assert f"{page} was open to other users (mode 0644): it is owner-only now (0600)" in [
        r.getMessage() for r in caplog.records
    ]


@pytest.mark.emulator
def test_a_sync_keeps_its_copies_of_the_configs_owner_only_and_removes_them_when_it_ends(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "sync-run"
    copies = [workdir / "source_config.json", workdir / "destination_config.json"]
    seen: list[dict[str, int | None]] = []  # the copies' modes at each progress report (None: gone)
    destination = {"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}}
    with Emulator(customers=5, seed=4) as emulator:
        source = emulator_source_config(emulator.url)
        catalog = configured_catalog(discover(write_json(tmp_path / "source.json", source)))

        run_sync(
            workdir,
            source,
            destination,
            catalog,
            progress=lambda *_: seen.append({c.name: mode(c) if c.exists() else None for c in copies}),
            progress_every_s=0,
        )

    assert {c.name: 0o600 for c in copies} in seen  # while the connectors ran
    assert {m for modes in seen for m in modes.values()} <= {0o600, None}
    assert [c for c in copies if c.exists()] == []
    assert mode(tmp_path / "source.json") == 0o600
    assert mode(tmp_path / "perly.db") == 0o600  # created by the destination process
