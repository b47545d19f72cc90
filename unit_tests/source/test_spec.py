"""The connection form: a user pastes a key and nothing else; every field is explained and validated."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from airbyte_cdk.models import ConnectorSpecification
from hypothesis import given, settings
from hypothesis import strategies as st

import source_perly_stripe
from source_perly_stripe.check import config_problem
from source_perly_stripe.client import DEFAULT_BASE_URL, validate_api_key
from unit_tests.source.builders import ACCOUNT_ID, TEST_RESTRICTED_KEY, ConfigBuilder

SPEC_PATH = Path(source_perly_stripe.__file__).parent / "spec.json"
# A key as a copy from the Dashboard or a password manager may bring it: spaces before, a line break after.
PASTED_KEY = "  rk_test_51Habcdef0123456789\n"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def schema(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["connectionSpecification"]


def is_valid(schema: dict[str, Any], config: dict[str, Any]) -> bool:
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return validator.is_valid(config)


def test_spec_is_a_valid_airbyte_connector_specification(spec: dict[str, Any]) -> None:
    parsed = ConnectorSpecification(**spec)

    assert parsed.connectionSpecification["required"] == ["api_key"]
    jsonschema.Draft7Validator.check_schema(spec["connectionSpecification"])


def test_only_the_api_key_is_required_and_a_bare_key_is_a_complete_config(schema: dict[str, Any]) -> None:
    assert is_valid(schema, {"api_key": "sk_live_51Habcdef0123456789"})
    assert not is_valid(schema, {})


def test_api_key_is_secret_and_first(schema: dict[str, Any]) -> None:
    api_key = schema["properties"]["api_key"]

    assert api_key["airbyte_secret"] is True
    assert api_key["order"] == 0
    assert api_key["pattern"] == r"^\s*(sk|rk)_(live|test)_[A-Za-z0-9_]+\s*$"
    assert api_key["pattern_descriptor"]


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        ("sk_live_51Habcdef0123456789", True),
        ("sk_test_51Habcdef0123456789", True),
        ("rk_live_51Habcdef0123456789", True),
        ("rk_test_51Habcdef0123456789", True),
        ("rk_test_perly_billing", True),  # the emulator's named keys (docs/DESIGN.md)
        ("pk_live_51Habcdef0123456789", False),
        ("pk_test_51Habcdef0123456789", False),
        ("sk_prod_51Habcdef0123456789", False),
        ("sk_live_", False),
        ("whsec_51Habcdef0123456789", False),
        # Whitespace around a pasted key is forgiven (the client strips it); inside a key it is not.
        (" sk_live_51Habcdef0123456789", True),
        (PASTED_KEY, True),
        ("\trk_test_51Habcdef0123456789\r\n", True),
        ("rk_test_51Habcdef 0123456789", False),
        ("rk_test_51Habcdef\n0123456789", False),
        (" rk_test_51Habcdef\t0123456789\n", False),
    ],
)
def test_form_pattern_and_key_validation_agree(schema: dict[str, Any], key: str, accepted: bool) -> None:
    form_accepts = re.fullmatch(schema["properties"]["api_key"]["pattern"], key) is not None

    assert form_accepts is accepted
    assert (validate_api_key(key) is None) is accepted


@pytest.mark.parametrize("key", ["rk_test_51Habcdef 0123456789", " rk_test_51Habcdef\t0123456789\n"])
def test_a_key_with_whitespace_inside_is_refused_saying_so_without_showing_it(key: str) -> None:
    message = validate_api_key(key)

    assert message is not None
    assert "space, tab or line break inside it" in message
    assert "51Habcdef" not in message
    assert "0123456789" not in message


def test_every_field_has_title_description_and_a_unique_order(schema: dict[str, Any]) -> None:
    properties = schema["properties"]
    orders = [field["order"] for field in properties.values()]

    assert sorted(orders) == list(range(len(properties)))
    for name, field in properties.items():
        assert field.get("title"), name
        assert len(field.get("description", "")) > 20, name


def test_optional_fields_have_examples_that_the_schema_accepts(schema: dict[str, Any]) -> None:
    for name, field in schema["properties"].items():
        for example in field.get("examples", []):
            assert is_valid(schema, {"api_key": TEST_RESTRICTED_KEY, name: example}), (name, example)


def test_base_url_is_hidden_with_stripe_as_default(schema: dict[str, Any]) -> None:
    base_url = schema["properties"]["base_url"]

    assert base_url["airbyte_hidden"] is True
    assert base_url["default"] == DEFAULT_BASE_URL
    assert is_valid(schema, {"api_key": TEST_RESTRICTED_KEY, "base_url": "http://127.0.0.1:12111"})
    assert not is_valid(schema, {"api_key": TEST_RESTRICTED_KEY, "base_url": "api.stripe.com"})


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("start_date", "2024-01-01T00:00:00Z", True),
        ("start_date", "2024-01-01", False),
        ("start_date", "2024-01-01T00:00:00+02:00", False),
        ("account_id", ACCOUNT_ID, True),
        ("account_id", "1BuilderAccount", False),
        ("max_requests_per_second", 20, True),
        ("max_requests_per_second", 0, False),
        ("max_requests_per_second", "fast", False),
    ],
)
def test_optional_fields_are_validated(
    schema: dict[str, Any], field: str, value: Any, accepted: bool
) -> None:
    assert is_valid(schema, {"api_key": TEST_RESTRICTED_KEY, field: value}) is accepted


def test_a_full_config_from_the_builder_is_valid(schema: dict[str, Any]) -> None:
    config = (
        ConfigBuilder()
        .with_start_date("2024-01-01T00:00:00Z")
        .with_account_id(ACCOUNT_ID)
        .with_max_requests_per_second(40)
        .with_base_url("http://127.0.0.1:12111")
        .build()
    )

    assert is_valid(schema, config)


def test_descriptions_tell_a_restricted_key_user_which_permissions_to_grant(schema: dict[str, Any]) -> None:
    description = schema["properties"]["api_key"]["description"]

    for resource in ("Customers", "Subscriptions", "Invoices", "Charges", "Events"):
        assert resource in description


_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2000),
    st.floats(-1, 2000, allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "2024-01-01T00:00:00Z",
            "2024-13-45T00:00:00Z",
            "2024-01-01T00:00:00Z\n",
            "acct_1BuilderAccount",
            "acct_",
            "http://127.0.0.1:12111",
            "https://api.stripe.com/",
            "https://api.stripe.com/v1",
            "rk_test_builderKey0123456789rstu",
            "\trk_test_builderKey0123456789rstu",
            " rk_test_builderKey0123456789rstu\n",
            'rk_test_builder"Key\\0123',
            "rk_test_büilderKey0123",
        ]
    ),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        # Mostly a good key, so that the other fields get checked too.
        {
            "api_key": st.one_of(
                st.just(TEST_RESTRICTED_KEY), st.just(f" {TEST_RESTRICTED_KEY}\n"), _FIELD_VALUES
            )
        },
        optional={
            name: _FIELD_VALUES
            for name in ("start_date", "account_id", "max_requests_per_second", "base_url", "concurrency")
        },
    )
)
def test_the_connector_rejects_every_config_the_spec_rejects(config: dict[str, Any]) -> None:
    """The entrypoint validates with `config_problem` instead of the CDK's schema check (whose messages
    quote values): it must be at least as strict."""
    schema = json.loads(SPEC_PATH.read_text())["connectionSpecification"]
    if not is_valid(schema, config):
        assert config_problem(config) is not None


@pytest.mark.parametrize(
    "start_date", ["2024-13-45T00:00:00Z", "2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z"]
)
def test_an_impossible_start_date_is_refused_by_the_connector_and_where_it_can_by_the_form(
    schema: dict[str, Any], start_date: str
) -> None:
    config = ConfigBuilder().with_start_date(start_date).build()

    message = config_problem(config)

    assert message is not None
    assert "start date" in message
    # A pattern cannot know month lengths; it does know months, days and hours.
    assert is_valid(schema, config) is (start_date == "2024-02-30T00:00:00Z")


def test_the_entrypoint_masks_a_padded_key_also_as_the_client_uses_it_and_as_messages_escape_it(
    spec: dict[str, Any],
) -> None:
    from airbyte_cdk.utils.airbyte_secrets_utils import filter_secrets, update_secrets

    from source_perly_stripe.entrypoint import ClearConfigEntrypoint

    padded = '\t rk_test_builder"Key\\0123456789\n'
    try:
        ClearConfigEntrypoint.set_up_secret_filter({"api_key": padded}, spec["connectionSpecification"])
        shown = [
            padded,
            padded.strip(),
            repr(padded)[1:-1],
            json.dumps(padded)[1:-1],
            json.dumps(padded.strip()),
        ]

        assert [filter_secrets(f"key {form} here") for form in shown] == ["key **** here"] * 4 + [
            'key "****" here'
        ]
    finally:
        update_secrets([])


def test_the_cli_prints_the_spec_message_the_cdk_would_without_importing_the_cdk() -> None:
    """`spec` answers before the CDK is imported (start-up time), with the CDK's exact bytes."""
    import logging
    import subprocess
    import sys

    from airbyte_cdk.entrypoint import AirbyteEntrypoint
    from airbyte_cdk.models import AirbyteMessage, Type

    from source_perly_stripe.source import SourcePerlyStripe

    program = (
        "import sys; sys.argv = ['source-perly-stripe', 'spec']\n"
        "from source_perly_stripe.run import run; run()\n"
        "print('cdk imported' if 'airbyte_cdk' in sys.modules else 'no cdk')"
    )
    root = Path(source_perly_stripe.__file__).parents[1]
    output = subprocess.run(
        [sys.executable, "-c", program], check=True, capture_output=True, text=True, cwd=root
    ).stdout.splitlines()
    spec = SourcePerlyStripe().spec(logging.getLogger("test"))
    expected = AirbyteEntrypoint.airbyte_message_to_string(AirbyteMessage(type=Type.SPEC, spec=spec))
    assert output == [expected, "no cdk"]


def spec_from_the_cli() -> dict[str, Any]:
    """The connection specification as `source-perly-stripe spec` prints it (the form Airbyte shows)."""
    import subprocess
    import sys

    root = Path(source_perly_stripe.__file__).parents[1]
    output = subprocess.run(
        [sys.executable, str(root / "main.py"), "spec"], check=True, capture_output=True, text=True, cwd=root
    ).stdout
    specification: dict[str, Any] = json.loads(output)["spec"]["connectionSpecification"]
    return specification


def test_the_spec_the_cli_prints_accepts_a_pasted_key_with_whitespace_around_it_not_inside() -> None:
    schema = spec_from_the_cli()

    assert is_valid(schema, {"api_key": PASTED_KEY})
    assert not is_valid(schema, {"api_key": "rk_test_51Habcdef 0123456789"})
    assert config_problem({"api_key": PASTED_KEY}) is None


@pytest.mark.browser
def test_a_browser_form_reading_the_spec_pattern_accepts_the_pasted_key(tmp_path: Path) -> None:
    """Airbyte's form checks the pattern with the browser's own RegExp (ECMAScript, where `$` does not
    match before a final line break as Python's does): Chromium gives the form's verdicts."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed: run scripts/ensure-system-deps.sh")
    keys = [PASTED_KEY, "\trk_test_51Habcdef0123456789\r\n", "rk_test_51Habcdef 0123456789", "pk_test_51H"]
    pattern = spec_from_the_cli()["properties"]["api_key"]["pattern"]
    page = tmp_path / "form.html"
    page.write_text(
        "<body><script>const pattern = new RegExp("
        + json.dumps(pattern)
        + "); document.body.textContent = 'verdicts=' + JSON.stringify("
        + json.dumps(keys)
        + ".map((key) => pattern.test(key)));</script></body>"
    )
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    verdicts = re.search(r"verdicts=(\[[^\]]*\])", dom)
    assert verdicts is not None, dom
    assert json.loads(verdicts[1]) == [True, True, False, False]
