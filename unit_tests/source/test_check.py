"""`check`: each way a connection can be wrong gets its own, precise message."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
import requests_mock as rm
from airbyte_cdk.entrypoint import AirbyteEntrypoint
from airbyte_cdk.models import (
    AirbyteConnectionStatus,
    ConnectorSpecification,
    ConnectorSpecificationSerializer,
    Status,
)
from airbyte_cdk.sources import Source

import source_perly_stripe
from source_perly_stripe.check import (
    CORE_STREAMS,
    check_connection,
    config_problem,
    diagnose,
)
from source_perly_stripe.client import StripeClient, client_from_config, mask_key
from source_perly_stripe.entrypoint import ClearConfigEntrypoint
from unit_tests.source.builders import (
    ACCOUNT_ID,
    DEFAULT_BASE_URL,
    LIVE_SECRET_KEY,
    TEST_RESTRICTED_KEY,
    TEST_SECRET_KEY,
    ConfigBuilder,
    ErrorResponseBuilder,
    ListResponseBuilder,
    RecordBuilder,
    account_response,
    expired_api_key_error,
    invalid_api_key_error,
    permission_error,
    resource_missing_error,
    server_error,
)

ALL_STREAMS = {
    "customers": ("/v1/customers", "customer", "rak_customer_read"),
    "subscriptions": ("/v1/subscriptions", "subscription", "rak_subscription_read"),
    "invoices": ("/v1/invoices", "invoice", "rak_invoice_read"),
    "charges": ("/v1/charges", "charge", "rak_charge_read"),
    "coupons": ("/v1/coupons", "coupon", "rak_coupon_read"),
    "prices": ("/v1/prices", "price", "rak_plan_read"),
    "products": ("/v1/products", "product", "rak_product_read"),
    "events": ("/v1/events", "event", "rak_event_read"),
}
BILLING_FOUR = {"rak_customer_read", "rak_subscription_read", "rak_invoice_read", "rak_charge_read"}


def quiet_client(config: dict[str, Any]) -> StripeClient:
    """The client check would build, but with simulated sleeps so retries cost no time."""
    return client_from_config(config, max_retries=2, sleep=lambda _seconds: None)


def stripe_account(
    mocker: rm.Mocker,
    key: str = TEST_SECRET_KEY,
    permissions: set[str] | None = None,
    livemode: bool = False,
    account_readable: bool = True,
) -> None:
    """Registers a Stripe account whose key can read the streams its `permissions` allow (None: all)."""
    if account_readable and (permissions is None or "rak_connected_account_read" in permissions):
        mocker.get(f"{DEFAULT_BASE_URL}/v1/account", json=account_response())
    else:
        error = permission_error("rak_connected_account_read", key=key)
        mocker.get(f"{DEFAULT_BASE_URL}/v1/account", **error.as_requests_mock())
    for path, object_name, permission in ALL_STREAMS.values():
        if permissions is None or permission in permissions:
            record = RecordBuilder(object_name).with_field("livemode", livemode)
            mocker.get(
                f"{DEFAULT_BASE_URL}{path}", json=ListResponseBuilder(path).with_record(record).build()
            )
        else:
            mocker.get(
                f"{DEFAULT_BASE_URL}{path}", **permission_error(permission, key=key).as_requests_mock()
            )


def run_check(config: dict[str, Any], stream_names: list[str] | None = None) -> tuple[bool, str | None]:
    return check_connection(config, stream_names, client=quiet_client(config))


# ----------------------------------------------------------------------------------- successes


def test_given_secret_key_with_full_access_when_check_then_ok(requests_mock: rm.Mocker) -> None:
    stripe_account(requests_mock)

    ok, message = run_check(ConfigBuilder().build())

    assert ok
    assert message is not None
    assert "test-mode key" in message  # a test key works, but the user is told it is test data
    probed = {r.path for r in requests_mock.request_history}
    assert probed == {"/v1/account", *(path for path, _, _ in ALL_STREAMS.values())}
    assert all(r.qs.get("limit") == ["1"] for r in requests_mock.request_history if r.path != "/v1/account")


def test_given_live_secret_key_with_full_access_when_check_then_ok_without_note(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock, key=LIVE_SECRET_KEY, livemode=True)

    assert run_check(ConfigBuilder().with_api_key(LIVE_SECRET_KEY).build()) == (True, None)


def test_given_restricted_key_with_the_four_billing_permissions_when_check_then_ok_and_skips_are_named(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock, key=TEST_RESTRICTED_KEY, permissions=BILLING_FOUR)

    report = diagnose(
        ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build(),
        client=quiet_client(ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()),
    )

    assert report.ok
    assert sorted(report.readable) == sorted(CORE_STREAMS)
    assert report.unreadable == {
        "coupons": "rak_coupon_read",
        "prices": "rak_plan_read",
        "products": "rak_product_read",
        "events": "rak_event_read",
    }
    assert report.message is not None
    for stream, slug in report.unreadable.items():
        assert f"{stream} (needs {slug})" in report.message
    assert "skipped" in report.message
    assert "rak_connected_account_read" in report.message  # not fatal, but said
    # The figures the missing permissions change are named, each with the permission that restores it.
    assert set(report.limited_figures) == {
        "rak_coupon_read",
        "rak_plan_read",
        "rak_product_read",
        "rak_event_read",
    }
    assert "without rak_coupon_read, MRR of a subscription whose coupon" in report.message
    assert "without rak_product_read, tier names fall back to the price's lookup key" in report.message


def test_given_a_full_key_when_check_then_no_figure_is_named_as_limited(requests_mock: rm.Mocker) -> None:
    stripe_account(requests_mock)
    report = diagnose(ConfigBuilder().build(), client=quiet_client(ConfigBuilder().build()))
    assert report.ok
    assert report.limited_figures == {}


def test_given_selected_streams_when_check_then_only_those_and_the_core_are_probed(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock)

    ok, _ = run_check(ConfigBuilder().build(), ["prices", "not_a_stream"])

    assert ok
    probed = {r.path for r in requests_mock.request_history}
    assert probed == {"/v1/account", "/v1/prices", *(ALL_STREAMS[name][0] for name in CORE_STREAMS)}


def test_given_connect_account_id_when_check_then_every_probe_names_that_account(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock)
    requests_mock.get(f"{DEFAULT_BASE_URL}/v1/account", json=account_response(ACCOUNT_ID))

    ok, _ = run_check(ConfigBuilder().with_account_id(ACCOUNT_ID).build())

    assert ok
    assert {r.headers.get("Stripe-Account") for r in requests_mock.request_history} == {ACCOUNT_ID}


# ------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("api_key", "expected"),
    [
        ("", "required"),
        ("pk_live_51Habcdefghijklmnop", "publishable"),
        ("whsec_abcdefghijklmnop", "webhook signing secret"),
        ("sk_live_abc-def ghi", "malformed"),
        ("hello", "must start with sk_live_, sk_test_, rk_live_ or rk_test_"),
    ],
    ids=["empty", "publishable", "webhook_secret", "malformed", "not_a_key"],
)
def test_given_badly_formed_key_when_check_then_fails_before_any_request(
    requests_mock: rm.Mocker, api_key: str, expected: str
) -> None:
    ok, message = check_connection(ConfigBuilder().with_api_key(api_key).build())

    assert not ok
    assert message is not None
    assert expected in message
    assert requests_mock.call_count == 0
    if len(api_key) > 8:
        assert api_key[8:] not in message


def test_given_invalid_or_revoked_key_when_check_then_says_so(requests_mock: rm.Mocker) -> None:
    requests_mock.get(rm.ANY, **invalid_api_key_error(LIVE_SECRET_KEY).as_requests_mock())

    ok, message = run_check(ConfigBuilder().with_api_key(LIVE_SECRET_KEY).build())

    assert not ok
    assert message is not None
    assert "revoked" in message
    assert mask_key(LIVE_SECRET_KEY) in message
    assert LIVE_SECRET_KEY not in message


def test_given_expired_key_when_check_then_says_expired_not_invalid(requests_mock: rm.Mocker) -> None:
    requests_mock.get(rm.ANY, **expired_api_key_error(TEST_RESTRICTED_KEY).as_requests_mock())

    ok, message = run_check(ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build())

    assert not ok
    assert message is not None
    assert "has expired" in message
    assert "revoked" not in message


def test_given_restricted_key_without_invoices_when_check_then_fails_naming_stream_and_permission(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(
        requests_mock,
        key=TEST_RESTRICTED_KEY,
        permissions={"rak_customer_read", "rak_subscription_read", "rak_charge_read"},
    )

    ok, message = run_check(ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build())

    assert not ok
    assert message is not None
    assert "cannot read invoices (rak_invoice_read)" in message
    assert "customers (" not in message
    assert "events (rak_event_read)" in message  # the optional ones are listed too, as optional


def test_given_restricted_key_with_no_core_permissions_when_check_then_all_four_are_named(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock, key=TEST_RESTRICTED_KEY, permissions={"rak_event_read"})

    ok, message = run_check(ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build())

    assert not ok
    assert message is not None
    for stream in CORE_STREAMS:
        assert f"{stream} ({ALL_STREAMS[stream][2]})" in message


def test_given_live_key_but_server_returns_test_data_when_check_then_reports_mix_up(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock, key=LIVE_SECRET_KEY, livemode=False)

    ok, message = run_check(ConfigBuilder().with_api_key(LIVE_SECRET_KEY).build())

    assert not ok
    assert message is not None
    assert "Test/live mix-up" in message
    assert "live-mode key" in message
    assert "test-mode data" in message


def test_given_account_livemode_disagrees_with_key_when_check_then_reports_mix_up(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock)
    requests_mock.get(f"{DEFAULT_BASE_URL}/v1/account", json=account_response(livemode=True))

    ok, message = run_check(ConfigBuilder().build())

    assert not ok
    assert message is not None
    assert "Test/live mix-up" in message


def test_given_stripe_says_object_exists_in_other_mode_when_check_then_reports_mix_up(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock, key=LIVE_SECRET_KEY, livemode=True)
    mixup = resource_missing_error(
        "No such account: 'acct_1'; a similar object exists in test mode, but a live mode key was used to "
        "make this request.",
        param="account",
    )
    requests_mock.get(f"{DEFAULT_BASE_URL}/v1/account", **mixup.as_requests_mock())

    ok, message = run_check(ConfigBuilder().with_api_key(LIVE_SECRET_KEY).build())

    assert not ok
    assert message is not None
    assert "exists in test mode" in message
    assert "live-mode key" in message


def test_given_connect_account_the_key_cannot_access_when_check_then_names_the_account(
    requests_mock: rm.Mocker,
) -> None:
    denied = ErrorResponseBuilder(
        403,
        f"The provided key 'sk_test_***abcd' does not have access to account '{ACCOUNT_ID}' (or that account "
        "does not exist). Application access may have been revoked.",
    )
    requests_mock.get(rm.ANY, **denied.as_requests_mock())

    ok, message = run_check(ConfigBuilder().with_account_id(ACCOUNT_ID).build())

    assert not ok
    assert message is not None
    assert f"no access to the connected account {ACCOUNT_ID}" in message


def test_given_stripe_unreachable_when_check_then_says_where_it_tried(requests_mock: rm.Mocker) -> None:
    requests_mock.get(rm.ANY, exc=requests.exceptions.ConnectionError("refused"))
    config = ConfigBuilder().with_base_url("http://127.0.0.1:9").build()

    ok, message = run_check(config)

    assert not ok
    assert message is not None
    assert "Could not reach Stripe at http://127.0.0.1:9" in message


def test_given_stripe_keeps_failing_when_check_then_transient_message(requests_mock: rm.Mocker) -> None:
    stripe_account(requests_mock)
    requests_mock.get(f"{DEFAULT_BASE_URL}/v1/invoices", **server_error(503).as_requests_mock())

    ok, message = run_check(ConfigBuilder().build())

    assert not ok
    assert message is not None
    assert "invoices" in message
    assert "503" in message


def test_given_base_url_that_is_not_stripe_when_check_then_points_at_the_base_url(
    requests_mock: rm.Mocker,
) -> None:
    config = ConfigBuilder().with_base_url("http://127.0.0.1:8000").build()
    requests_mock.get(rm.ANY, status_code=404, text="Not Found")

    ok, message = run_check(config)

    assert not ok
    assert message is not None
    assert "does not answer like the Stripe API" in message
    assert "API base URL" in message


# --------------------------------------------------------------------------------- config rules


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b.with_account_id("1234"), "acct_"),
        (lambda b: b.with_base_url("ftp://x"), "https://"),
        (lambda b: b.with_max_requests_per_second(0), "positive"),
        (lambda b: b.with_start_date("2024-01-01"), "2024-01-01T00:00:00Z"),
    ],
    ids=["account_id", "base_url", "budget", "start_date"],
)
def test_config_problem_explains_each_bad_setting(change: Any, expected: str) -> None:
    message = config_problem(change(ConfigBuilder()).build())

    assert message is not None
    assert expected in message


def test_config_problem_accepts_a_bare_key_and_a_full_config() -> None:
    assert config_problem(ConfigBuilder().build()) is None
    full = (
        ConfigBuilder()
        .with_api_key(TEST_RESTRICTED_KEY)
        .with_start_date("2024-01-01T00:00:00Z")
        .with_account_id(ACCOUNT_ID)
        .with_max_requests_per_second(12.5)
        .with_base_url("http://127.0.0.1:8123")
        .build()
    )
    assert config_problem(full) is None


def test_given_a_test_server_that_answers_a_live_key_with_test_data_when_check_then_ok_with_a_note(
    requests_mock: rm.Mocker,
) -> None:
    emulator_url = "http://127.0.0.1:12111"
    record = RecordBuilder("customer").with_field("livemode", False)
    requests_mock.get(f"{emulator_url}/v1/account", json=account_response())
    requests_mock.get(rm.ANY, json=ListResponseBuilder().with_record(record).build())
    config = ConfigBuilder().with_api_key(LIVE_SECRET_KEY).with_base_url(emulator_url).build()

    ok, message = run_check(config)

    assert ok
    assert message is not None
    assert "returned test-mode data to a live-mode key" in message


class _SpecOnlySource(Source):
    """The smallest source that has our spec and check: enough to drive the CDK entrypoint."""

    def spec(self, logger: logging.Logger) -> ConnectorSpecification:
        spec = json.loads((Path(source_perly_stripe.__file__).parent / "spec.json").read_text())
        return ConnectorSpecificationSerializer.load(spec)

    def check(self, logger: logging.Logger, config: Mapping[str, Any]) -> AirbyteConnectionStatus:
        ok, message = check_connection(config)
        return AirbyteConnectionStatus(status=Status.SUCCEEDED if ok else Status.FAILED, message=message)

    def discover(self, logger: logging.Logger, config: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def read(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def entrypoint_check(
    entrypoint_class: type[AirbyteEntrypoint], config: dict[str, Any], tmp_path: Path
) -> str:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    entrypoint = entrypoint_class(_SpecOnlySource())
    return "\n".join(entrypoint.run(entrypoint.parse_args(["check", "--config", str(config_file)])))


def test_given_publishable_key_when_cli_check_then_clear_message_instead_of_pattern_and_no_key(
    requests_mock: rm.Mocker, tmp_path: Path
) -> None:
    secret = "pk_live_51HpublishableSecretPart"

    plain_cdk = entrypoint_check(AirbyteEntrypoint, {"api_key": secret}, tmp_path)
    ours = entrypoint_check(ClearConfigEntrypoint, {"api_key": secret}, tmp_path)

    assert "does not match" in plain_cdk  # what the CDK alone would tell the user
    assert '"status":"FAILED"' in ours
    assert "This is a publishable key" in ours
    assert "publishableSecretPart" not in ours + plain_cdk
    assert requests_mock.call_count == 0


def test_given_secret_key_refused_a_stream_without_a_permission_name_then_fails_with_stripes_reason(
    requests_mock: rm.Mocker,
) -> None:
    stripe_account(requests_mock)
    refused = ErrorResponseBuilder(403, "Your account cannot currently make live charges.")
    requests_mock.get(f"{DEFAULT_BASE_URL}/v1/charges", **refused.as_requests_mock())

    ok, message = run_check(ConfigBuilder().build())

    assert not ok
    assert message is not None
    assert "Cannot read the charges stream" in message
    assert "cannot currently make live charges" in message
