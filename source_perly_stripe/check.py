"""`check`: can this config read what Perly needs? Says exactly what is wrong when it cannot.

The rule: the check succeeds when the four core streams (customers, subscriptions, invoices, charges)
are readable; Perly's health signals cannot be computed without them. Other streams a restricted key
cannot read are named (with the permission to add) and will be skipped by `read`. The core streams are
always probed, whatever `stream_names` holds, because the product needs them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from source_perly_stripe.client import (
    DEFAULT_BASE_URL,
    StripeAuthError,
    StripeClient,
    StripeError,
    StripeNotFoundError,
    StripePermissionError,
    StripeTransientError,
    client_from_config,
    validate_api_key,
)
from source_perly_stripe.spec_message import spec_json
from source_perly_stripe.streams import CORE_STREAMS, STREAM_PATHS, STREAMS_BY_NAME

ACCOUNT_PERMISSION = "rak_connected_account_read"
# The health figures a missing permission changes (PERLY_CONTRACT.md section 9). Everything else is
# rebuilt from the four core resources; each such row also lists these in `limitations`.
FIGURES_WITHOUT: dict[str, str] = {
    "rak_coupon_read": (
        "MRR of a subscription whose coupon no invoice has used yet (only the coupon says whether it "
        "lasts forever) is left undiscounted"
    ),
    "rak_plan_read": (
        "MRR of a tiered price not yet billed for a full period at its current quantity is left out, "
        "and an unmapped tiered price is ranked by its average unit price"
    ),
    "rak_product_read": (
        "tier names fall back to the price's lookup key, else its nickname, else the product id "
        "(ranks are unchanged)"
    ),
    "rak_event_read": (
        "changes are dated from invoices and sync-to-sync differences instead of Stripe's events"
    ),
}

_MODE_MIXUP_RE = re.compile(
    r"exists in (live|test) mode, but an? (live|test) mode key was used", re.IGNORECASE
)
_NOTES_LOCK = threading.Lock()
_DASHBOARD_HINT = "Edit the key in Stripe Dashboard > Developers > API keys and give it Read access to"


@dataclass
class CheckReport:
    """What the check found. `unreadable` maps a stream to the rak_ permission it lacks."""

    ok: bool
    message: str | None
    readable: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # permission -> the health figures its absence changes (see FIGURES_WITHOUT)
    limited_figures: dict[str, str] = field(default_factory=dict)


class _CheckFailed(Exception):
    pass


def config_problem(config: object) -> str | None:
    """A message naming the first bad field of `config`, else None. It never quotes a value.

    This replaces the CDK's validation against the spec (see `entrypoint.ClearConfigEntrypoint`), whose
    messages quote the offending value: escaped (a tab as `\\t`), so its exact-string secret filter
    misses a key with whitespace around it. It is at least as strict as the spec (a test holds it to
    that), except that whitespace around a pasted key is forgiven, as the client strips it.
    """
    if not isinstance(config, Mapping):
        return "The config must be a JSON object."
    problem = validate_api_key(config.get("api_key"))
    if problem:
        return problem
    for name, rule in _OPTIONAL_FIELDS.items():
        if name in config and not rule.accepts(config[name]):
            return rule.message
    if "start_date" in config:
        try:
            parse_start_date(config["start_date"] or "")  # present, it must be a time (null is not)
        except ValueError as bad_date:
            return str(bad_date)
    return None


def parse_start_date(value: object) -> datetime | None:
    """The config's start date as a UTC datetime (None when unset); ValueError when it is no real time.

    The standard library's ISO parser is strict (a month 13 or a February 30 fails), which is all the
    spec's one form `YYYY-MM-DDTHH:MM:SS[.fff]Z` needs.
    """
    if value is None:
        return None
    message = "The start date must be a real UTC time like 2024-01-01T00:00:00Z (or be left out)."
    if not isinstance(value, str) or not re.fullmatch(_SPEC_FIELDS["start_date"]["pattern"], value):
        raise ValueError(message)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(message) from None


@dataclass(frozen=True)
class _FieldRule:
    """An optional field's rule: a spec pattern (matched whole) or a number range, and what to say."""

    message: str
    pattern: str | None = None
    number: tuple[float, float] | None = None
    whole: bool = False

    def accepts(self, value: object) -> bool:
        if self.pattern is not None:
            return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        if isinstance(value, bool) or not isinstance(value, int | float) or self.number is None:
            return False
        if self.whole and not float(value).is_integer():
            return False
        return self.number[0] <= value <= self.number[1]


def _field_rules(fields: Mapping[str, Any]) -> dict[str, _FieldRule]:
    """The optional fields' rules (start_date has its own), from the spec, so form and connector agree."""

    def number(name: str, message: str) -> _FieldRule:
        field_spec = fields[name]
        limits = (field_spec["minimum"], field_spec["maximum"])
        return _FieldRule(message, number=limits, whole=field_spec["type"] == "integer")

    return {
        "account_id": _FieldRule(
            "The Connected account ID must look like acct_... (or be left out).",
            pattern=fields["account_id"]["pattern"],
        ),
        "base_url": _FieldRule(
            "The API base URL must be https://host[:port] (leave it out for Stripe itself).",
            pattern=fields["base_url"]["pattern"],
        ),
        "max_requests_per_second": number(
            "max_requests_per_second",
            "The request budget must be a positive number of requests per second, at most 1000 "
            "(or be left out).",
        ),
        "concurrency": number("concurrency", "Parallel requests must be a whole number from 1 to 32."),
    }


_SPEC_FIELDS: dict[str, Any] = spec_json()["connectionSpecification"]["properties"]
_OPTIONAL_FIELDS = _field_rules(_SPEC_FIELDS)


def check_connection(
    config: Mapping[str, Any],
    stream_names: Iterable[str] | None = None,
    *,
    client: StripeClient | None = None,
) -> tuple[bool, str | None]:
    """(True, note or None) when the core streams are readable, else (False, what is wrong and what to do).

    On success the message, when there is one, names the streams that will be skipped; log it.
    """
    report = diagnose(config, stream_names, client=client)
    return report.ok, report.message


def diagnose(
    config: Mapping[str, Any],
    stream_names: Iterable[str] | None = None,
    *,
    client: StripeClient | None = None,
) -> CheckReport:
    problem = config_problem(config)
    if problem:
        return CheckReport(False, problem)
    own_client = client is None
    if client is None:
        # A check should answer within seconds: few retries, short timeouts.
        client = client_from_config(config, max_retries=2, timeout=20.0)
    try:
        return _diagnose(client, stream_names)
    except _CheckFailed as failed:
        return CheckReport(False, str(failed))
    finally:
        if own_client:
            client.close()


def _diagnose(client: StripeClient, stream_names: Iterable[str] | None) -> CheckReport:
    wanted = [*STREAM_PATHS] if stream_names is None else [n for n in stream_names if n in STREAM_PATHS]
    to_probe = [*CORE_STREAMS, *(name for name in wanted if name not in CORE_STREAMS)]
    notes: list[str] = []

    _probe_account(client, notes)

    with ThreadPoolExecutor(max_workers=min(8, len(to_probe))) as pool:
        outcomes = list(pool.map(lambda name: _probe_stream(client, name, notes), to_probe))

    readable: list[str] = []
    unreadable: dict[str, str] = {}
    for name, outcome in zip(to_probe, outcomes, strict=True):
        if outcome is None:
            readable.append(name)
        elif isinstance(outcome, StripePermissionError) and (
            outcome.permission or client.key_kind == "restricted"
        ):
            unreadable[name] = outcome.permission or STREAMS_BY_NAME[name].permission
        else:
            raise _CheckFailed(_failure_message(client, outcome, f"the {name} stream"))

    if any(name in CORE_STREAMS for name in unreadable):
        optional = [f"{name} ({slug})" for name, slug in unreadable.items() if name not in CORE_STREAMS]
        message = missing_core_message(f"{client.key_kind} key {client.masked_key}", unreadable)
        if optional:
            message += f" Also unreadable (optional, would be skipped): {', '.join(optional)}."
        return CheckReport(False, message, readable, unreadable, notes)

    limited = {slug: FIGURES_WITHOUT[slug] for slug in unreadable.values() if slug in FIGURES_WITHOUT}
    if unreadable:
        skipped = ", ".join(f"{name} (needs {slug})" for name, slug in unreadable.items())
        notes.append(
            f"The key {client.masked_key} cannot read these streams; they will be skipped: {skipped}. "
            f"{_DASHBOARD_HINT} those resources to sync them too."
        )
    if limited:
        figures = "; ".join(f"without {slug}, {figure}" for slug, figure in limited.items())
        notes.append(
            f"Every other health figure is the same as with a full key. The exceptions: {figures}. "
            "Each customer row these touch says so in its `limitations`."
        )
    if client.mode == "test":
        notes.append("This is a test-mode key: Perly will sync test-mode data, not live billing.")
    return CheckReport(True, " ".join(notes) or None, readable, unreadable, notes, limited)


def missing_core_message(key: str, unreadable: Mapping[str, str]) -> str:
    """What to say when `key` (as shown, e.g. "restricted key rk_live_…AbCd") lacks a core stream's
    permission; `unreadable` maps streams to the rak_ permission each lacks. Used by check and read."""
    missing = ", ".join(f"{name} ({unreadable[name]})" for name in CORE_STREAMS if name in unreadable)
    return (
        f"The {key} cannot read {missing}, which Perly needs to compute billing health. "
        f"{_DASHBOARD_HINT} Customers, Subscriptions, Invoices and Charges."
    )


def _probe_account(client: StripeClient, notes: list[str]) -> None:
    try:
        account = client.get("/v1/account")
    except StripePermissionError as exc:
        # A restricted key may lack the account permission: harmless, the streams tell us what we need.
        if client.key_kind == "restricted" and exc.permission in (ACCOUNT_PERMISSION, None):
            notes.append(f"The key cannot read the account details ({ACCOUNT_PERMISSION}); that is fine.")
            return
        raise _CheckFailed(_failure_message(client, exc, "the account")) from None
    except StripeError as exc:
        raise _CheckFailed(_failure_message(client, exc, "the account")) from None
    _check_livemode(client, account.get("livemode"), "the account", notes)
    if client.account_id and account.get("id") not in (None, client.account_id):
        raise _CheckFailed(
            f"Asked for connected account {client.account_id} but Stripe answered for another account; "
            "check the Connected account ID."
        )


def _probe_stream(client: StripeClient, name: str, notes: list[str]) -> StripeError | None:
    """None when one page of the stream's endpoint can be read, else the error."""
    path = STREAM_PATHS[name]
    try:
        page = client.get(path, [("limit", 1)])
    except StripeError as exc:
        return exc
    data = page.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        mode_notes: list[str] = []
        try:
            _check_livemode(client, data[0].get("livemode"), f"the {name} stream", mode_notes)
        except _CheckFailed as mixup:
            return StripeError(str(mixup), code="livemode_mismatch", path=path)
        with _NOTES_LOCK:
            notes.extend(note for note in mode_notes if note not in notes)
    return None


def _check_livemode(
    client: StripeClient, livemode: object, what: str, notes: list[str] | None = None
) -> None:
    if not isinstance(livemode, bool):
        return
    data_mode = "live" if livemode else "test"
    if data_mode != client.mode:
        if client.base_url != DEFAULT_BASE_URL and notes is not None:
            # A test server (the local emulator) may answer every key with test-mode objects: say it, go on.
            notes.append(f"{client.base_url} returned {data_mode}-mode data to a {client.mode}-mode key.")
            return
        raise _CheckFailed(
            f"Test/live mix-up: the key {client.masked_key} is a {client.mode}-mode key but {what} at "
            f"{client.base_url} returned {data_mode}-mode data. Use a {data_mode}-mode key for this server, "
            f"or point the connection at the right Stripe API."
        )


def _failure_message(client: StripeClient, error: StripeError, what: str) -> str:
    if error.code == "livemode_mismatch":
        return error.message
    mixup = _MODE_MIXUP_RE.search(error.message)
    if mixup:
        return (
            f"Test/live mix-up while reading {what}: the data exists in {mixup.group(1)} mode but the key "
            f"{client.masked_key} is a {mixup.group(2)}-mode key. Use the {mixup.group(1)}-mode key."
        )
    if isinstance(error, StripeAuthError):
        return error.message
    if isinstance(error, StripePermissionError):
        return f"Cannot read {what}: {error.message}"
    if isinstance(error, StripeTransientError):
        return f"Could not reach Stripe at {client.base_url} while reading {what}: {error.message}"
    if isinstance(error, StripeNotFoundError):
        return (
            f"{client.base_url} does not answer like the Stripe API ({what}: {error.message}). "
            "Check the API base URL, or leave it at https://api.stripe.com."
        )
    return f"Stripe refused to list {what}: {error.message}"
