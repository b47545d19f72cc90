"""The destination's SPEC as a plain dict: `destination-perly spec` prints it without importing the
Airbyte CDK (see connector_spec), and the CDK path loads the same dict."""

from __future__ import annotations

import dataclasses
from typing import Any

from destination_perly.health.model import RiskPolicy

# Values the spec offers and the config checks (destination_perly/config.py imports them): here, so
# that `destination-perly spec` imports no JSON-schema validator.
DOCKER_SQLITE_PATH = "/local/perly.db"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"

POLICY_HELP = {
    "delinquent_churn_days": "Days past due after which a past_due subscription stops counting toward MRR.",
    "failed_payments_flag_count": "Failed charges within the window that raise the payment-failures flag.",
    "failed_payments_window_days": "Window for counting failed charges.",
    "downgrade_window_days": "A move to a lower-ranked plan within this many days raises the downgrade flag.",
    "invoice_aging_flag_days": "An open invoice this many days past due raises the invoice-aging flag.",
    "trial_expiring_days": "A trial ending within this many days without a payment method raises the flag.",
    "mrr_contraction_window_days": "MRR is compared with its value this many days ago.",
    "uncollectible_window_days": "Days an uncollectible invoice keeps payment risk critical.",
    "movement_grouping_seconds": "Changes within this many seconds count as one MRR movement.",
}


def _risk_policy_schema() -> dict[str, Any]:
    """Built from `RiskPolicy` so the spec's defaults are always the engine's."""
    properties = {}
    for field in dataclasses.fields(RiskPolicy):
        properties[field.name] = {
            "type": "integer",
            "minimum": 0,
            "default": field.default,
            "title": field.name.replace("_", " ").capitalize(),
            "description": POLICY_HELP.get(field.name, ""),
        }
    return {
        "type": "object",
        "title": "Risk policy",
        "description": "Thresholds of the billing-health rules; leave empty for the contract's defaults.",
        "properties": properties,
        "additionalProperties": False,
        "order": 2,
    }


def connection_specification() -> dict[str, Any]:
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Perly Destination Spec",
        "type": "object",
        "required": ["store"],
        "additionalProperties": True,
        "properties": {
            "store": {
                "title": "Store",
                "description": "Where Perly keeps Stripe data and the computed health.",
                "type": "object",
                "order": 0,
                "oneOf": [
                    {
                        "title": "SQLite",
                        "required": ["store_type"],
                        "properties": {
                            "store_type": {"type": "string", "const": "sqlite", "default": "sqlite"},
                            "path": {
                                "type": "string",
                                "title": "Database file",
                                "description": "Path of the SQLite file. /local is the directory Airbyte "
                                "mounts into containers; with no path, var/perly.db is used outside Docker.",
                                "default": DOCKER_SQLITE_PATH,
                                "examples": [DOCKER_SQLITE_PATH, "var/perly.db"],
                            },
                        },
                    },
                    {
                        "title": "PostgreSQL",
                        "required": ["store_type", "host", "database", "username"],
                        "properties": {
                            "store_type": {"type": "string", "const": "postgres", "default": "postgres"},
                            "host": {
                                "type": "string",
                                "title": "Host",
                                "description": "Host name or IP address of the PostgreSQL server.",
                                "examples": ["db.example.com", "10.0.0.5"],
                                "order": 0,
                            },
                            "port": {
                                "type": "integer",
                                "title": "Port",
                                "description": "TCP port of the PostgreSQL server.",
                                "default": 5432,
                                "minimum": 1,
                                "maximum": 65535,
                                "examples": [5432],
                                "order": 1,
                            },
                            "database": {
                                "type": "string",
                                "title": "Database",
                                "description": "The database to write to; it must exist already.",
                                "examples": ["perly"],
                                "order": 2,
                            },
                            "schema": {
                                "type": "string",
                                "title": "Schema",
                                "description": "The schema that holds Perly's tables; created if missing.",
                                "default": "perly",
                                "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,62}$",
                                "examples": ["perly"],
                                "order": 3,
                            },
                            "username": {
                                "type": "string",
                                "title": "User",
                                "description": "The role Perly connects as. It needs CREATE on the database "
                                "(or on an existing schema) and owns the tables it creates.",
                                "examples": ["perly_writer"],
                                "order": 4,
                            },
                            "password": {
                                "type": "string",
                                "title": "Password",
                                "description": "The role's password; leave empty for trust or peer "
                                "authentication. It is never logged.",
                                "airbyte_secret": True,
                                "order": 5,
                            },
                            "ssl_mode": {
                                "type": "string",
                                "title": "SSL mode",
                                "description": "libpq's sslmode. verify-ca checks the server's certificate "
                                "against the CA certificate below; verify-full also checks the host name.",
                                "enum": list(SSL_MODES),
                                "default": "prefer",
                                "examples": ["verify-full"],
                                "order": 6,
                            },
                            "ca_certificate": {
                                "type": "string",
                                "title": "CA certificate",
                                "description": "For verify-ca and verify-full: the PEM text of the "
                                "certificate authority that signed the server's certificate (not a secret). "
                                "Empty: libpq's default, ~/.postgresql/root.crt.",
                                "multiline": True,
                                "examples": [f"{PEM_CERTIFICATE}\nMIIC...\n-----END CERTIFICATE-----"],
                                "order": 7,
                            },
                        },
                    },
                ],
            },
            "plan_tiers": {
                "title": "Plan tiers",
                "description": "Map a price id, plan id, product id or lookup key to a tier name and rank "
                "(a higher rank is a better plan). Unmapped prices use the product name, ranked by price.",
                "type": "array",
                "order": 1,
                "items": {
                    "type": "object",
                    "required": ["match", "tier"],
                    "properties": {
                        "match": {"type": "string", "title": "Price, plan, product or lookup key"},
                        "tier": {"type": "string", "title": "Tier name"},
                        "rank": {"type": "number", "title": "Rank", "default": 0},
                    },
                },
            },
            "risk_policy": _risk_policy_schema(),
            "as_of": {
                "type": "string",
                "title": "Compute health as of",
                "description": "Fixed evaluation time (ISO-8601 UTC) for demos and tests; empty means now.",
                "airbyte_hidden": True,
                "format": "date-time",
            },
        },
    }


def destination_spec() -> dict[str, Any]:
    """The ConnectorSpecification, as JSON."""
    return {
        "documentationUrl": "https://github.com/perly/perly-stripe",  # pyproject's Documentation URL
        "connectionSpecification": connection_specification(),
        "supportsIncremental": True,
        "supported_destination_sync_modes": ["append", "overwrite", "append_dedup"],
    }
