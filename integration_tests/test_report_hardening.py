"""perly-report against hostile text and damaged stores: nothing acts on the operator's terminal, and a
store that cannot be read gets a message saying why, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from integration_tests.report_store import CUSTOMERS, customer, write_store

# Clear the screen, retitle the window (OSC 0, ended by BEL), colour the text, and a bidi override.
HOSTILE_NAME = "\x1b[2J\x1b]0;owned\x07Evil\u202eCorp"
HOSTILE_REASON = "\x1b[31mpay now\x1b[0m\r\n\x9b2J"
HOSTILE = customer(
    "cus_hostile",
    name=HOSTILE_NAME,
    email="x\x1b[8m@example.com",
    mrr=1000,
    mrr_by_currency={"usd": 1000},
    risk_score=50,
    risk_reasons=[HOSTILE_REASON],
)


def report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "destination_perly.report", *args], capture_output=True, check=False, cwd=cwd
    )


def control_characters(data: bytes) -> set[str]:
    text = data.decode("utf-8")
    return {ch for ch in text if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F or ch == "\u202e"}


def test_given_names_and_reasons_with_escape_sequences_then_the_terminal_shows_them_inert(
    tmp_path: Path,
) -> None:
    store = write_store(tmp_path / "perly.db", [*CUSTOMERS, HOSTILE])
    page = tmp_path / "report.html"

    result = report("--db", str(store), "--html", str(page))

    assert result.returncode == 0, result.stderr
    assert control_characters(result.stdout) == set()
    out = result.stdout.decode("utf-8")
    assert "\\x1b[2J\\x1b]0;owned\\x07Evil\\u202eCorp" in out  # shown, escaped, in the name column
    assert "- \\x1b[31mpay now\\x1b[0m\\r\\n\\x9b2J" in out
    assert control_characters(page.read_bytes()) == set()
    assert "\\x1b]0;owned\\x07Evil\\u202eCorp" in page.read_text(encoding="utf-8")


# The four ways the report reads a store: the report and its backtest, named by --db or by the
# destination's config. They open it one way and say the same thing when it cannot be read.
READS = ["report --db", "backtest --db", "report --config", "backtest --config"]


def read_args(read: str, store: Path) -> list[str]:
    command, where = read.split()
    if where == "--config":
        config = store.parent.parent / f"{store.parent.name}-destination.json"
        config.write_text(json.dumps({"store": {"store_type": "sqlite", "path": str(store)}}))
        args = ["--config", str(config)]
    else:
        args = ["--db", str(store)]
    return [*args, "--backtest"] if command == "backtest" else args


@pytest.mark.parametrize("read", READS)
@pytest.mark.parametrize("damage", ["garbage", "truncated", "damaged pages"])
def test_given_a_corrupt_or_truncated_store_then_the_report_says_so_without_a_traceback(
    tmp_path: Path, damage: str, read: str
) -> None:
    store = tmp_path / "perly.db"
    if damage == "garbage":
        store.write_bytes(b"this was never a SQLite file\n" * 200)
        store.chmod(0o600)  # owner-only, as Perly makes a store: no notice before the message
    elif damage == "truncated":
        write_store(store)
        os.truncate(store, store.stat().st_size // 2)
    else:  # the header and schema page intact (it opens), the table pages overwritten (reads fail)
        write_store(store)
        size = store.stat().st_size
        with store.open("r+b") as file:
            file.seek(32768)
            file.write(b"\xff" * (size - 32768))

    result = report(*read_args(read, store))

    err = result.stderr.decode("utf-8")
    assert result.returncode == 3, err
    assert err.startswith(f"perly-report: {store} is truncated or corrupt"), err
    assert "run a full sync to rebuild it" in err
    assert "Traceback" not in err
    assert result.stdout == b""


@pytest.mark.parametrize("read", READS)
def test_given_no_store_at_the_path_then_the_report_says_run_a_sync_and_creates_nothing(
    tmp_path: Path, read: str
) -> None:
    store = tmp_path / "perly.db"

    result = report(*read_args(read, store))

    assert result.returncode == 2, result.stderr
    assert result.stderr.decode() == f"perly-report: no SQLite store at {store}: run a sync first\n"
    assert not store.exists()


@pytest.mark.parametrize("read", READS)
def test_given_a_sqlite_file_without_the_perly_tables_then_the_report_says_run_a_sync(
    tmp_path: Path, read: str
) -> None:
    store = tmp_path / "perly.db"
    sqlite3.connect(store).execute("CREATE TABLE other (x)").connection.close()

    result = report(*read_args(read, store))

    assert result.returncode == 2, result.stderr
    assert "run a sync first" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


@pytest.mark.parametrize("read", READS)
def test_given_a_store_in_a_read_only_directory_then_the_report_says_what_to_do(
    tmp_path: Path, read: str
) -> None:
    directory = tmp_path / "readonly"
    directory.mkdir()
    store = write_store(directory / "perly.db")
    command = [sys.executable, "-m", "destination_perly.report", *read_args(read, store)]
    if os.geteuid() == 0:
        # Permissions do not stop root: make the directory read-only with a private read-only mount.
        if shutil.which("unshare") is None:
            pytest.fail("root needs util-linux's unshare to make a read-only directory")
        remount = f'mount --bind "{directory}" "{directory}" && mount -o remount,ro,bind "{directory}"'
        command = ["unshare", "-m", "sh", "-c", f'{remount} && exec "$@"', "sh", *command]
    else:
        directory.chmod(0o555)
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        directory.chmod(0o755)

    assert result.returncode == 3, result.stderr
    assert "not a Perly store" not in result.stderr
    assert f"{directory} is not writable by this user" in result.stderr
    assert "perly.db-shm" in result.stderr
    assert "Traceback" not in result.stderr
