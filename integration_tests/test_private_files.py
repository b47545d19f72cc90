"""Files holding customer data or keys are readable by their owner only, whatever the umask: the
SQLite store with its -wal and -shm, the directories created for it, the HTML report, and the run's
copies of the configs (which a sync also removes when it ends)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from destination_perly.report import main as report_main
from destination_perly.store.sqlite import SqliteStore
from integration_tests.demo import emulator_source_config
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


def test_an_existing_store_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SqliteStore(path).close()
    path.chmod(0o640)  # e.g. readable by a reporting group on purpose

    SqliteStore(path).close()

    assert mode(path) == 0o640


def test_the_html_report_is_owner_only_even_over_a_world_readable_file(tmp_path: Path) -> None:
    store = write_store(tmp_path / "perly.db")
    page = tmp_path / "report.html"
    page.write_text("an older page")
    page.chmod(0o644)

    assert report_main(["--db", str(store), "--html", str(page)]) == 0

    assert mode(page) == 0o600
    assert "<html" in page.read_text()


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
