"""Secrets never reach output: the real console scripts, run with hostile keys and passwords, print no
form of them (raw, stripped, escaped) on stdout (records, logs, traces, statuses) or stderr, whatever
the verb (`spec` reads no config) and whether the config is refused, forgiven or fails later (a
closed port, a key the server refuses)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.stripe_emulator import Emulator

pytestmark = pytest.mark.slow

CANARY = "CANARYx7Q"  # the secrets' distinctive middle: a mask shows a prefix and the last 4 at most


def console_script(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    assert found, f"{name} is not installed"
    return found


def forms(secret: str) -> set[str]:
    return {
        form
        for shown in (
            secret,
            repr(secret)[1:-1],
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
        )
        for form in (shown, shown.strip())
    } | {CANARY}


def run(script: str, verb: str | None, tmp_path: Path, config: Any, stdin: str = "") -> tuple[str, int]:
    config_file = tmp_path / "config.json"
    config_file.write_text(config if isinstance(config, str) else json.dumps(config))  # text: as typed
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps(CATALOG))
    args = [console_script(script), *([verb] if verb else []), "--config", str(config_file)]
    if verb in ("read", "write"):
        args += ["--catalog", str(catalog_file)]
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    return done.stdout + done.stderr, done.returncode


def assert_never_shown(output: str, secret: str) -> None:
    shown = [form for form in forms(secret) if form in output]
    assert not shown, f"the secret appeared as {shown!r}"


CATALOG = {
    "streams": [
        {
            "stream": {
                "name": name,
                "json_schema": {"type": "object"},
                "supported_sync_modes": ["full_refresh", "incremental"],
            },
            "sync_mode": "full_refresh",
            "destination_sync_mode": "append_dedup",
            "primary_key": [["id"]],
        }
        for name in ("customers", "subscriptions", "invoices", "charges")
    ]
}

# ------------------------------------------------------------------------------------------ source
# Each process takes seconds to start, so the cases rotate over the verbs instead of crossing them:
# every hostile form and every verb is run, and the verbs share one validation path.

MALFORMED_KEYS = [
    ("check", f"sk_live_{CANARY}01234\\56789abcd"),
    ("discover", f"rk_live_{CANARY}01'23\"456789abcd"),
    ("read", f"sk_live_{CANARY}0123ünï\u2028456789abcd"),
    ("check", f"sk_test_{CANARY}0123\t456789abcd"),
]


@pytest.mark.parametrize(("verb", "key"), MALFORMED_KEYS, ids=["backslash", "quotes", "unicode", "inner-tab"])
def test_a_malformed_key_is_refused_without_being_shown(tmp_path: Path, verb: str, key: str) -> None:
    output, _ = run("source-perly-stripe", verb, tmp_path, {"api_key": key, "base_url": "http://127.0.0.1:9"})

    assert_never_shown(output, key)
    assert "API key is malformed" in output


def test_a_good_key_is_not_shown_when_another_field_is_refused(tmp_path: Path) -> None:
    key = f"sk_test_{CANARY}0123456789abcd"

    output, _ = run(
        "source-perly-stripe", "read", tmp_path, {"api_key": key, "start_date": "2024-13-45T00:00:00Z"}
    )

    assert_never_shown(output, key)
    assert "config_error" in output
    assert "start date" in output


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(customers=5, seed=3) as running:
        yield running


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("verb", "padding"),
    [("check", ("\t", "")), ("discover", (" ", "\n")), ("read", ("\t", "\n"))],
    ids=["check-tab", "discover-space-newline", "read-tab-newline"],
)
def test_a_padded_key_is_forgiven_and_never_shown_in_a_real_run(
    tmp_path: Path, emulator: Emulator, verb: str, padding: tuple[str, str]
) -> None:
    key = f"rk_test_{CANARY}0123456789abcd"
    emulator.add_key(key, {"rak_customer_read"})  # a run that also meets 403s and their messages
    padded = padding[0] + key + padding[1]

    output, returncode = run(
        "source-perly-stripe", verb, tmp_path, {"api_key": padded, "base_url": emulator.url}
    )

    assert_never_shown(output, padded)
    assert_never_shown(output, key)
    if verb == "discover":
        assert returncode == 0
        assert '"type":"CATALOG"' in output
    else:  # the key lacks the core billing permissions: check and read both say which
        assert "rak_subscription_read" in output


@pytest.mark.emulator
def test_a_key_the_server_refuses_is_not_shown(tmp_path: Path, emulator: Emulator) -> None:
    key = f"sk_live_{CANARY}0123456789abcd"  # well formed, unknown to the emulator

    output, _ = run("source-perly-stripe", "read", tmp_path, {"api_key": key, "base_url": emulator.url})

    assert_never_shown(output, key)
    assert "config_error" in output


@pytest.mark.parametrize(
    ("script", "verb"),
    [("source-perly-stripe", "check"), ("source-perly-stripe", "read"), ("destination-perly", "write")],
)
def test_a_config_file_that_is_not_json_is_a_config_error_naming_the_place_not_the_text(
    tmp_path: Path, script: str, verb: str
) -> None:
    key = f"sk_live_{CANARY}0123456789abcd"
    hand_edited = '{"api_key": "' + key + '",\n "base_url": }'  # a value left out by hand

    output, returncode = run(script, verb, tmp_path, hand_edited)

    assert_never_shown(output, key)
    assert returncode != 0
    assert '"failure_type":"config_error"' in output
    assert "config.json is not valid JSON (line 2, column 14)" in output


# ------------------------------------------------------------------------------------- destination


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("verb", "store", "password"),
    [
        ("check", {"store_type": "postgresql"}, f"Back\\slash\t{CANARY}"),
        ("write", {"store_type": "postgresql"}, f"ünï\u00e7ødé{CANARY}\u2028"),
        ("check", {"store_type": "postgres", "port": "5432"}, f" {CANARY} pw\n"),
        ("write", {"store_type": "postgres", "port": "5432"}, f'{CANARY}\'"pw"'),
        ("check", {"store_type": "postgres"}, f"{CANARY}'\"pw\\\t"),
        ("write", {"store_type": "postgres"}, f" Back\\slash\t{CANARY}\n"),
    ],
    ids=[
        "check-misspelt-type",
        "write-misspelt-type",
        "check-port-as-text",
        "write-port-as-text",
        "check-closed-port",
        "write-closed-port",
    ],
)
def test_a_password_is_never_shown(tmp_path: Path, verb: str, store: dict[str, Any], password: str) -> None:
    config = {
        "store": {
            "host": "127.0.0.1",
            "port": closed_port(),
            "database": "perly",
            "username": "perly",
            "password": password,
            **store,
        }
    }

    output, _ = run("destination-perly", verb, tmp_path, config)

    assert_never_shown(output, password)
    assert "store" in output or "PostgreSQL" in output


def test_the_report_reading_a_destination_config_never_shows_its_password(tmp_path: Path) -> None:
    password = f" Back\\slash\t{CANARY}'\"\n"
    store = {"store_type": "postgresql", "host": "127.0.0.1", "database": "perly", "username": "perly"}

    output, returncode = run("perly-report", None, tmp_path, {"store": {**store, "password": password}})

    assert_never_shown(output, password)
    assert returncode != 0
    assert "store_type" in output
