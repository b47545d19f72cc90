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
from typing import Any

from airbyte_cdk.entrypoint import AirbyteEntrypoint
from airbyte_cdk.models import ConnectorSpecification, FailureType  # type: ignore[attr-defined]
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

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
        "changes are dated from invoices and sync-to-sync differences instead of Stripe's events, and a "
        "customer deleted before the first sync is not known as deleted"
    ),
}

_MODE_MIXUP_RE = re.compile(
    r"exists in (live|test) mode, but an? (live|test) mode key was used", re.IGNORECASE
)
_START_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z")
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


def config_problem(config: Mapping[str, Any]) -> str | None:
    """A clear message for a config the spec's patterns would reject tersely, else None.

    The CDK validates the config against the spec before `check` runs and can only say "'****' does not
    match <pattern>"; an entrypoint that calls this first can say what is wrong in words instead.
    """
    problem = validate_api_key(config.get("api_key"))
    if problem:
        return problem
    account_id = config.get("account_id")
    if account_id and not (isinstance(account_id, str) and re.fullmatch(r"acct_[A-Za-z0-9]+", account_id)):
        return "The Connected account ID must look like acct_... (or be left empty)."
    base_url = config.get("base_url")
    if base_url and not (isinstance(base_url, str) and re.match(r"^https?://[^\s/]+", base_url)):
        return "The API base URL must start with https:// (leave it empty for Stripe itself)."
    rate = config.get("max_requests_per_second")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
        return "The request budget must be a positive number of requests per second (or left empty)."
    start_date = config.get("start_date")
    if start_date and not (isinstance(start_date, str) and _START_DATE_RE.fullmatch(start_date)):
        return "The start date must be a UTC time like 2024-01-01T00:00:00Z (or be left empty)."
    return None


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

    missing_core = [name for name in CORE_STREAMS if name in unreadable]
    if missing_core:
        wanted_list = ", ".join(f"{name} ({unreadable[name]})" for name in missing_core)
        optional = [f"{name} ({slug})" for name, slug in unreadable.items() if name not in CORE_STREAMS]
        message = (
            f"The {client.key_kind} key {client.masked_key} cannot read {wanted_list}, which Perly needs. "
            f"{_DASHBOARD_HINT} Customers, Subscriptions, Invoices and Charges."
        )
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


class ClearConfigEntrypoint(AirbyteEntrypoint):
    """The CDK entrypoint, but a bad config is explained in words before the spec's terse pattern check.

    Use it where `launch` would build an `AirbyteEntrypoint` (see `source_perly_stripe.run`).
    """

    @staticmethod
    def validate_connection(source_spec: ConnectorSpecification, config: Mapping[str, Any]) -> None:
        problem = config_problem(config)
        if problem:
            raise AirbyteTracedException(
                message=problem, internal_message=problem, failure_type=FailureType.config_error
            )
        AirbyteEntrypoint.validate_connection(source_spec, config)
