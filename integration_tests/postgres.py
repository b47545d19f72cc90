"""The test PostgreSQL server (started by scripts/with-postgres.sh) as tests and benchmarks use it."""

from __future__ import annotations

import os
from typing import Any

DSN_VAR = "PERLY_TEST_POSTGRES_DSN"


def postgres_dsn() -> str:
    """The test server's DSN; a test that needs it fails (never skips) when it is not set."""
    import pytest

    dsn = os.environ.get(DSN_VAR)
    if not dsn:
        pytest.fail(
            f"{DSN_VAR} is not set: run `scripts/with-postgres.sh pytest ...` (or `make test`), "
            "or deselect these tests with -m 'not postgres'"
        )
    return dsn


def store_settings(dsn: str, schema: str) -> dict[str, Any]:
    """The destination's `store` config for the server a libpq DSN names, in its own schema."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    return {
        "store_type": "postgres",
        "host": parts.get("host", "127.0.0.1"),
        "port": int(parts.get("port", 5432)),
        "database": parts.get("dbname", "postgres"),
        "username": parts.get("user", "postgres"),
        "password": parts.get("password"),
        "schema": schema,
        "ssl_mode": "disable",
    }
