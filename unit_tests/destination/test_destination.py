"""spec / check / write entry points and the configuration they accept."""

from __future__ import annotations

import dataclasses
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from airbyte_cdk.models import FailureType, Status
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_perly.config import (
    ConfigError,
    PostgresSettings,
    SqliteSettings,
    default_sqlite_path,
    parse_config,
)
from destination_perly.destination import DestinationPerly
from destination_perly.health.model import RiskPolicy
from unit_tests.destination.messages import catalog, configured

LOG = logging.getLogger("test")
SECRET = "pw-Do-Not-Leak-7731"
PG = {"store_type": "postgres", "host": "h", "database": "d", "username": "u"}
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec() -> dict:
    return DestinationPerly().spec(LOG).connectionSpecification


def test_spec_is_a_valid_schema_that_accepts_both_stores() -> None:
    schema = spec()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate({"store": {"store_type": "sqlite", "path": "/local/perly.db"}}, schema)
    postgres = {"store_type": "postgres", "host": "db", "port": 5432, "database": "perly", "username": "u"}
    jsonschema.validate({"store": {**postgres, "password": "x", "ssl_mode": "require"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"store": {**postgres, "ssl_mode": "sometimes"}}, schema)


def test_spec_marks_the_password_secret_and_as_of_hidden() -> None:
    schema = spec()
    postgres = schema["properties"]["store"]["oneOf"][1]["properties"]
    assert postgres["password"]["airbyte_secret"] is True
    assert schema["properties"]["as_of"]["airbyte_hidden"] is True


def test_spec_explains_every_postgres_field_with_an_example_but_the_password() -> None:
    postgres = spec()["properties"]["store"]["oneOf"][1]["properties"]
    fields = {name: field for name, field in postgres.items() if name != "store_type"}

    assert all(field.get("description") for field in fields.values())
    assert sorted(name for name, field in fields.items() if not field.get("examples")) == ["password"]
    assert "ca_certificate" in fields
    assert "airbyte_secret" not in fields["ca_certificate"]  # a CA certificate is public


def test_spec_risk_policy_defaults_are_the_contracts() -> None:
    defaults = {name: p["default"] for name, p in spec()["properties"]["risk_policy"]["properties"].items()}
    assert defaults == dataclasses.asdict(RiskPolicy())
    assert defaults["delinquent_churn_days"] == 30
    assert defaults["trial_expiring_days"] == 3


def test_config_parses_every_setting() -> None:
    parsed = parse_config(
        {
            "store": {
                "store_type": "postgres",
                "host": "db",
                "database": "perly",
                "username": "u",
                "password": "p",
            },
            "plan_tiers": [{"match": "price_pro", "tier": "Pro", "rank": 3}],
            "risk_policy": {"delinquent_churn_days": 45},
            "as_of": "2026-11-01T00:00:00Z",
        }
    )
    assert parsed.store == PostgresSettings("db", 5432, "perly", "perly", "u", "p", "prefer")
    assert parsed.health.policy.delinquent_churn_days == 45
    assert parsed.health.policy.trial_expiring_days == 3
    assert parsed.health.tier_rules[0].tier == "Pro"
    assert parsed.as_of == datetime(2026, 11, 1, tzinfo=UTC)


def test_config_repr_never_shows_the_password() -> None:
    store = {"store_type": "postgres", "host": "db", "database": "perly", "username": "u", "password": SECRET}
    assert SECRET not in repr(parse_config({"store": store}))


def test_config_defaults_to_a_sqlite_file() -> None:
    assert parse_config({}).store == SqliteSettings(default_sqlite_path())
    assert parse_config({"store": {"store_type": "sqlite"}}).as_of is None


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"store": {"store_type": "oracle"}}, "store_type"),
        ({"store": {"store_type": "postgres", "host": "h"}}, "database, username"),
        (
            {"store": {"store_type": "postgres", "host": "h", "database": "d", "username": "u", "port": "x"}},
            "port",
        ),
        ({"risk_policy": {"delinquent_churn_dayz": 3}}, "delinquent_churn_dayz"),
        ({"risk_policy": {"trial_expiring_days": -1}}, "trial_expiring_days"),
        ({"plan_tiers": [{"tier": "Pro"}]}, "plan_tiers[0]"),
        ({"as_of": "yesterday"}, "as_of"),
        ({"store": {**PG, "ssl_mode": "require", "ca_certificate": CA_PEM}}, "verify-ca or verify-full"),
        ({"store": {**PG, "ssl_mode": "verify-ca", "ca_certificate": "/etc/ssl/ca.pem"}}, "PEM text"),
    ],
    ids=[
        "store-type",
        "pg-missing",
        "pg-port",
        "policy-typo",
        "policy-negative",
        "tier-no-match",
        "as-of",
        "ca-without-verifying",
        "ca-not-pem",
    ],
)
def test_bad_config_says_what_is_wrong(raw: dict, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)


def test_check_passes_on_a_writable_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "perly.db"
    result = DestinationPerly().check(LOG, {"store": {"store_type": "sqlite", "path": str(path)}})
    assert result.status == Status.SUCCEEDED
    assert path.exists()


def test_check_fails_with_the_path_when_the_sqlite_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = DestinationPerly().check(
        LOG, {"store": {"store_type": "sqlite", "path": str(blocker / "perly.db")}}
    )
    assert result.status == Status.FAILED
    assert str(blocker) in result.message


def test_check_fails_on_bad_config_without_touching_a_store() -> None:
    result = DestinationPerly().check(LOG, {"store": {"store_type": "oracle"}})
    assert result.status == Status.FAILED
    assert "Invalid configuration" in result.message


def test_check_names_an_unreachable_postgres_without_its_password() -> None:
    port = free_port()
    config = {
        "store": {
            "store_type": "postgres",
            "host": "127.0.0.1",
            "port": port,
            "database": "perly",
            "username": "perly",
            "password": SECRET,
        }
    }
    result = DestinationPerly().check(LOG, config)
    assert result.status == Status.FAILED
    assert str(port) in result.message
    assert SECRET not in result.message


def test_write_with_bad_config_raises_a_config_error() -> None:
    with pytest.raises(AirbyteTracedException) as caught:
        list(
            DestinationPerly().write(
                {"store": {"store_type": "oracle"}}, catalog(configured("customers")), []
            )
        )
    assert caught.value.failure_type == FailureType.config_error


def test_spec_passes_the_cdks_secret_marking_lint() -> None:
    from airbyte_cdk.test.standard_tests._spec_lint import assert_spec_is_valid

    assert_spec_is_valid(DestinationPerly().spec(LOG), connector_name="destination-perly")


# ---------------------------------------------------------------- config errors never quote a value

HOSTILE_PASSWORDS = [
    "Back\\slash\tCANARY-PW",
    ' "quoted" CANARY-PW\n',
    "ünï\u00e7ødé CANARY-PW",
    "CANARY-PW'\"\\",
]


def leaks(text: str, secret: str) -> bool:
    """Whether `text` shows `secret` in any form: raw, stripped, escaped, or its distinctive part."""
    import json

    forms = {secret, secret.strip(), repr(secret)[1:-1], json.dumps(secret)[1:-1], "CANARY-PW"}
    return any(form in text for form in forms)


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
@pytest.mark.parametrize(
    "store",
    [
        {"store_type": "postgresql"},
        {"store_type": "postgres", "port": "5432"},
        {"store_type": "postgres", "schema": "no-dashes"},
        {"store_type": "postgres", "ssl_mode": "always"},
        {"store_type": "postgres", "host": 7},
        {"store_type": None},
    ],
    ids=["misspelt-type", "port-as-text", "bad-schema", "bad-ssl-mode", "host-not-text", "no-type"],
)
def test_a_bad_store_config_is_named_by_field_and_never_quotes_the_password(
    password: str, store: dict
) -> None:
    from destination_perly.config import config_problem
    from destination_perly.destination import connection_specification

    raw = {"store": {"host": "db", "database": "perly", "username": "u", "password": password, **store}}

    problem = config_problem(raw, connection_specification())

    assert problem is not None
    assert problem.startswith("store.")
    assert not leaks(problem, password)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ({"store": {"store_type": "sqlite"}, "as_of": 5}, "as_of must be of type string"),
        ({"store": {"path": "x.db"}}, "store matches none of the kinds the spec allows"),
        (
            {"store": {"store_type": "sqlite"}, "plan_tiers": [{"match": 1, "tier": "Pro"}]},
            "plan_tiers.0.match",
        ),
        (
            {
                "store": {
                    "store_type": "postgres",
                    "host": "h",
                    "database": "d",
                    "username": "u",
                    "password": 7,
                }
            },
            "store.password must be a string",
        ),
    ],
)
def test_what_only_the_spec_refuses_is_named_by_field_and_rule(raw: dict, said: str) -> None:
    from destination_perly.config import config_problem
    from destination_perly.destination import connection_specification

    problem = config_problem(raw, connection_specification())

    assert problem is not None
    assert said in problem
    assert config_problem({"store": {"store_type": "sqlite"}}, connection_specification()) is None
