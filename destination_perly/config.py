"""The destination's configuration: parsed and validated in one place, into plain objects.

SQLite path: the spec's default is `/local/perly.db`, the directory Airbyte mounts into destination
containers. When no path is configured, that default is used if `/local` exists (Docker) and
`var/perly.db` under the working directory otherwise (a local run).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

import connector_spec
from destination_perly.health.model import HealthConfig, RiskPolicy, TierRule
from destination_perly.spec import DOCKER_SQLITE_PATH, PEM_CERTIFICATE, SSL_MODES
from destination_perly.store.base import CustomerIdsOf, Store

LOCAL_SQLITE_PATH = "var/perly.db"
VERIFYING_SSL_MODES = ("verify-ca", "verify-full")
SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(ValueError):
    """The configuration is wrong; the message says what to fix (and never quotes a secret)."""


@dataclass(frozen=True)
class SqliteSettings:
    path: str


@dataclass(frozen=True)
class PostgresSettings:
    host: str
    port: int
    database: str
    schema: str
    username: str
    password: str | None = dataclasses.field(default=None, repr=False)
    ssl_mode: str = "prefer"
    ca_certificate: str | None = None  # PEM text of the CA that signed the server's certificate


@dataclass(frozen=True)
class DestinationConfig:
    store: SqliteSettings | PostgresSettings
    health: HealthConfig
    as_of: datetime | None = None


def load_json_object(path: str | Path) -> dict[str, Any]:
    """A config file's JSON object, or ConfigError saying why not (see connector_spec)."""
    try:
        return connector_spec.read_json_object(path)
    except connector_spec.ConfigFileError as exc:
        raise ConfigError(str(exc)) from None


def default_sqlite_path() -> str:
    return DOCKER_SQLITE_PATH if Path("/local").is_dir() else LOCAL_SQLITE_PATH


def parse_timestamp(value: Any, what: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{what} must be an ISO-8601 time like 2026-11-01T00:00:00Z") from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise ConfigError(f"{what} must be an ISO-8601 time like 2026-11-01T00:00:00Z")


def _store_settings(raw: Any) -> SqliteSettings | PostgresSettings:
    if raw is None:
        return SqliteSettings(default_sqlite_path())
    if not isinstance(raw, Mapping):
        raise ConfigError("store must be an object")
    kind = raw.get("store_type", "sqlite")
    if kind == "sqlite":
        path = raw.get("path") or default_sqlite_path()
        if not isinstance(path, str):
            raise ConfigError("store.path must be a string")
        return SqliteSettings(path)
    if kind == "postgres":
        missing = [k for k in ("host", "database", "username") if not raw.get(k)]
        if missing:
            raise ConfigError(f"PostgreSQL store needs {', '.join(missing)}")
        for key in ("host", "database", "username", "password", "ca_certificate"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise ConfigError(f"store.{key} must be a string")
        port = raw.get("port", 5432)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError("store.port must be an integer between 1 and 65535")
        schema = raw.get("schema") or "perly"
        if not isinstance(schema, str) or not SCHEMA_NAME.match(schema):
            raise ConfigError("store.schema must be a plain identifier (letters, digits, underscores)")
        ssl_mode = raw.get("ssl_mode") or "prefer"
        if ssl_mode not in SSL_MODES:
            raise ConfigError(f"store.ssl_mode must be one of {', '.join(SSL_MODES)}")
        ca_certificate = raw.get("ca_certificate") or None
        if ca_certificate and ssl_mode not in VERIFYING_SSL_MODES:
            raise ConfigError(
                "store.ca_certificate is only used to verify the server: set store.ssl_mode to "
                "verify-ca or verify-full"
            )
        if ca_certificate and PEM_CERTIFICATE not in ca_certificate:
            raise ConfigError(f"store.ca_certificate must be PEM text starting with {PEM_CERTIFICATE}")
        password = raw.get("password")
        return PostgresSettings(
            host=str(raw["host"]),
            port=port,
            database=str(raw["database"]),
            schema=schema,
            username=str(raw["username"]),
            password=str(password) if password else None,
            ssl_mode=ssl_mode,
            ca_certificate=ca_certificate,
        )
    raise ConfigError("store.store_type must be 'sqlite' or 'postgres'")


def _tier_rules(raw: Any) -> tuple[TierRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("plan_tiers must be a list")
    rules = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or not entry.get("match") or not entry.get("tier"):
            raise ConfigError(f"plan_tiers[{index}] needs 'match' and 'tier'")
        rank = entry.get("rank", 0)
        if not isinstance(rank, int | float) or isinstance(rank, bool):
            raise ConfigError(f"plan_tiers[{index}].rank must be a number")
        rules.append(TierRule(match=str(entry["match"]), tier=str(entry["tier"]), rank=float(rank)))
    return tuple(rules)


def _risk_policy(raw: Any) -> RiskPolicy:
    if raw is None:
        return RiskPolicy()
    if not isinstance(raw, Mapping):
        raise ConfigError("risk_policy must be an object")
    known = {f.name for f in dataclasses.fields(RiskPolicy)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"risk_policy.{key} is not a known setting ({', '.join(sorted(known))})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"risk_policy.{key} must be a whole number >= 0")
        values[key] = value
    return RiskPolicy(**values)


def parse_config(raw: Mapping[str, Any]) -> DestinationConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("the configuration must be a JSON object")
    as_of = raw.get("as_of")
    return DestinationConfig(
        store=_store_settings(raw.get("store")),
        health=HealthConfig(
            policy=_risk_policy(raw.get("risk_policy")), tier_rules=_tier_rules(raw.get("plan_tiers"))
        ),
        as_of=parse_timestamp(as_of, "as_of") if as_of not in (None, "") else None,
    )


def config_problem(raw: object, schema: Mapping[str, Any]) -> str | None:
    """What is wrong with a destination config, naming the field and never a value; None if it is fine.

    `parse_config`'s words come first; then the spec (`schema`) is checked here rather than by the CDK,
    whose messages quote values: a password's escaped form (a tab as `\\t`) escapes its secret filter.
    """
    try:
        parse_config(raw)  # type: ignore[arg-type]  # it refuses what is not a mapping itself
    except ConfigError as problem:
        return str(problem)
    error = best_match(Draft7Validator(schema).iter_errors(raw))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "the config"
    rule = error.validator_value
    if error.validator == "required" and isinstance(error.instance, Mapping):
        rule = ", ".join(name for name in rule if name not in error.instance)
    says = _SCHEMA_RULES.get(str(error.validator), "breaks the spec's {validator} rule")
    return f"{where} {says.format(rule=rule, validator=error.validator)}"


# How each JSON-schema rule is put into words. The rule's own value comes from the spec, never the config.
_SCHEMA_RULES = {
    "type": "must be of type {rule}",
    "required": "needs {rule}",
    "enum": "must be one of {rule}",
    "const": "must be {rule}",
    "minimum": "must be at least {rule}",
    "maximum": "must be at most {rule}",
    "pattern": "does not have the expected form",
    "additionalProperties": "has a setting the spec does not know",
    "oneOf": "matches none of the kinds the spec allows",
}


def open_store(
    settings: SqliteSettings | PostgresSettings, customer_ids_of: CustomerIdsOf | None = None
) -> Store:
    """Connects to the configured store (schema not created yet: call `ensure_schema`)."""
    if isinstance(settings, SqliteSettings):
        from destination_perly.store.sqlite import SqliteStore

        return SqliteStore(settings.path, customer_ids_of)
    from destination_perly.store.postgres import PostgresStore

    return PostgresStore(
        host=settings.host,
        port=settings.port,
        database=settings.database,
        schema=settings.schema,
        username=settings.username,
        password=settings.password,
        ssl_mode=settings.ssl_mode,
        ca_certificate=settings.ca_certificate,
        customer_ids_of=customer_ids_of,
    )
