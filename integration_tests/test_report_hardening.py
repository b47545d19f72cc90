"""perly-report against hostile text and damaged stores: nothing acts on the operator's terminal, and a
store that cannot be read gets a message saying why, never a traceback."""

from __future__ import annotations

import os
import shutil
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


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_given_a_corrupt_or_truncated_store_then_the_report_says_so_without_a_traceback(
    tmp_path: Path, damage: str
) -> None:
    store = tmp_path / "perly.db"
    if damage == "garbage":
        store.write_bytes(b"this was never a SQLite file\n" * 200)
    else:
        write_store(store)
        os.truncate(store, store.stat().st_size // 2)

    result = report("--db", str(store))

    err = result.stderr.decode("utf-8")
    assert result.returncode == 3, err
    assert err.startswith(f"perly-report: {store} is truncated or corrupt"), err
    assert "run a full sync to rebuild it" in err
    assert "Traceback" not in err
    assert result.stdout == b""


def test_given_a_store_in_a_read_only_directory_then_the_report_says_what_to_do(tmp_path: Path) -> None:
    directory = tmp_path / "readonly"
    directory.mkdir()
    store = write_store(directory / "perly.db")
    command = [sys.executable, "-m", "destination_perly.report", "--db", str(store)]
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
