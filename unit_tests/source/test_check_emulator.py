"""`check` against the local Stripe emulator's keys, directly and through the connector's CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.stripe_emulator import Emulator
from source_perly_stripe.check import check_connection, diagnose

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(customers=20, seed=8) as running:
        yield running


def config_for(emulator: Emulator, key: str) -> dict[str, Any]:
    return {"api_key": key, "base_url": emulator.url}


def test_given_test_secret_key_then_ok_in_test_mode(emulator: Emulator) -> None:
    ok, message = check_connection(config_for(emulator, "sk_test_perly_demo"))

    assert ok
    assert message == "This is a test-mode key: Perly will sync test-mode data, not live billing."


def test_given_live_secret_key_then_ok_without_notes(emulator: Emulator) -> None:
    assert check_connection(config_for(emulator, "sk_live_perly_demo")) == (True, None)


def test_given_full_restricted_key_then_every_stream_is_readable(emulator: Emulator) -> None:
    report = diagnose(config_for(emulator, "rk_test_perly_full"))

    assert report.ok
    assert report.unreadable == {}
    assert len(report.readable) == 8


def test_given_the_product_pages_four_permission_key_then_ok_and_skipped_streams_named(
    emulator: Emulator,
) -> None:
    report = diagnose(config_for(emulator, "rk_test_perly_billing"))

    assert report.ok
    assert report.unreadable == {
        "coupons": "rak_coupon_read",
        "prices": "rak_plan_read",
        "products": "rak_product_read",
        "events": "rak_event_read",
    }
    assert report.message is not None
    assert "events (needs rak_event_read)" in report.message


def test_given_restricted_key_without_invoice_access_then_fails_naming_it(emulator: Emulator) -> None:
    emulator.add_key(
        "rk_test_perly_noinvoices",
        permissions={"rak_customer_read", "rak_subscription_read", "rak_charge_read"},
    )

    ok, message = check_connection(config_for(emulator, "rk_test_perly_noinvoices"))

    assert not ok
    assert message is not None
    assert "cannot read invoices (rak_invoice_read)" in message


def test_given_unknown_key_then_fails_as_invalid_or_revoked(emulator: Emulator) -> None:
    ok, message = check_connection(config_for(emulator, "sk_live_perly_revoked"))

    assert not ok
    assert message is not None
    assert "revoked" in message


def run_cli_check(tmp_path: Path, config: dict[str, Any]) -> tuple[int, str]:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "check", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    return done.returncode, done.stdout + done.stderr


def connection_status(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith("{") and '"CONNECTION_STATUS"' in line:
            status: dict[str, Any] = json.loads(line)["connectionStatus"]
            return status
    raise AssertionError(f"no CONNECTION_STATUS in output:\n{output}")


@pytest.mark.slow  # a connector process: the CDK import alone takes seconds
def test_cli_check_with_a_revoked_key_fails_cleanly_without_printing_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    secret = "sk_live_0123456789SecretPartRevoked"

    code, output = run_cli_check(tmp_path, config_for(emulator, secret))

    status = connection_status(output)
    assert code == 0
    assert status["status"] == "FAILED"
    assert "revoked" in status["message"]
    assert secret not in output
    assert "SecretPart" not in output


@pytest.mark.slow
def test_cli_check_with_the_four_permission_key_succeeds(emulator: Emulator, tmp_path: Path) -> None:
    code, output = run_cli_check(tmp_path, config_for(emulator, "rk_test_perly_billing"))

    assert code == 0
    assert connection_status(output)["status"] == "SUCCEEDED"


# A key as a copy from the Dashboard or a password manager may bring it: spaces before, a line break after.
PASTED = "  rk_test_perly_billing\n"


def test_given_a_key_pasted_with_spaces_and_a_line_break_then_check_is_ok(emulator: Emulator) -> None:
    report = diagnose(config_for(emulator, PASTED))

    assert report.ok
    assert "customers" in report.readable


@pytest.mark.slow
def test_cli_check_with_a_pasted_key_succeeds_and_with_a_space_inside_says_so_never_showing_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    inside = "rk_test_perly_bil ling"

    pasted = connection_status(run_cli_check(tmp_path, config_for(emulator, PASTED))[1])
    code, output = run_cli_check(tmp_path, config_for(emulator, inside))

    assert pasted["status"] == "SUCCEEDED"
    assert code == 0
    assert connection_status(output)["status"] == "FAILED"
    assert "space, tab or line break inside it" in connection_status(output)["message"]
    assert "perly_bil" not in output
