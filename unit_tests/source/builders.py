"""Fluent builders for the source's unit tests: configs, Stripe requests, list pages and error bodies.

Shared by the client/check tests and the stream tests. Keep every existing method working: add, never
rename. Builders return plain dicts (or CDK `HttpRequest`/`HttpResponse` where a name says so), so they
work with requests-mock and the CDK's HttpMocker alike.
"""

from __future__ import annotations

import copy
import email.utils
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson
from airbyte_cdk.test.mock_http import HttpRequest, HttpResponse

from unit_tests.shared_files import shared_file

DEFAULT_BASE_URL = "https://api.stripe.com"
TEST_SECRET_KEY = "sk_test_builderKey0123456789abcd"
LIVE_SECRET_KEY = "sk_live_builderKey0123456789wxyz"
TEST_RESTRICTED_KEY = "rk_test_builderKey0123456789rstu"
ACCOUNT_ID = "acct_1BuilderAccount"
# 2026-11-01T00:00:00Z: the emulator's default simulated now, a convenient fixed "now" for unit tests.
DEFAULT_NOW = 1793491200

# Stripe's example objects, used as record templates (shape reference only).


def http_date(unix_seconds: int | float) -> str:
    """An HTTP `Date` header value for a unix time (what Stripe's server clock reports)."""
    return email.utils.formatdate(unix_seconds, usegmt=True)


# --------------------------------------------------------------------------------------------- config


class ConfigBuilder:
    """`ConfigBuilder().with_api_key("sk_test_..").with_start_date(...).build()`"""

    def __init__(self) -> None:
        self._config: dict[str, Any] = {"api_key": TEST_SECRET_KEY}

    def with_api_key(self, api_key: str) -> ConfigBuilder:
        self._config["api_key"] = api_key
        return self

    def with_start_date(self, start_date: datetime | str) -> ConfigBuilder:
        if isinstance(start_date, datetime):
            start_date = start_date.strftime("%Y-%m-%dT%H:%M:%SZ")
        self._config["start_date"] = start_date
        return self

    def with_account_id(self, account_id: str) -> ConfigBuilder:
        self._config["account_id"] = account_id
        return self

    def with_max_requests_per_second(self, rate: float) -> ConfigBuilder:
        self._config["max_requests_per_second"] = rate
        return self

    def with_base_url(self, base_url: str) -> ConfigBuilder:
        self._config["base_url"] = base_url
        return self

    def with_field(self, name: str, value: Any) -> ConfigBuilder:
        """Any other option (e.g. tuning knobs the streams add)."""
        self._config[name] = value
        return self

    def without(self, name: str) -> ConfigBuilder:
        self._config.pop(name, None)
        return self

    def build(self) -> dict[str, Any]:
        return dict(self._config)


# -------------------------------------------------------------------------------------------- requests


class StripeRequestBuilder:
    """A GET request to a Stripe endpoint, in the CDK's `HttpRequest` form or as query params.

    `StripeRequestBuilder.endpoint("customers").with_limit(100).with_created_gte(t0).build()`
    """

    def __init__(self, path: str, base_url: str = DEFAULT_BASE_URL) -> None:
        self._path = path if path.startswith("/") else f"/v1/{path}"
        self._base_url = base_url.rstrip("/")
        self._params: dict[str, str | list[str]] = {}
        self._any_params = False
        self._headers: dict[str, str] = {}

    @classmethod
    def endpoint(cls, resource: str, base_url: str = DEFAULT_BASE_URL) -> StripeRequestBuilder:
        return cls(resource, base_url)

    @classmethod
    def object(cls, resource: str, object_id: str, base_url: str = DEFAULT_BASE_URL) -> StripeRequestBuilder:
        return cls(f"/v1/{resource}/{object_id}", base_url)

    def with_limit(self, limit: int) -> StripeRequestBuilder:
        self._params["limit"] = str(limit)
        return self

    def with_created_gte(self, value: int | datetime) -> StripeRequestBuilder:
        self._params["created[gte]"] = str(_unix(value))
        return self

    def with_created_gt(self, value: int | datetime) -> StripeRequestBuilder:
        self._params["created[gt]"] = str(_unix(value))
        return self

    def with_created_lte(self, value: int | datetime) -> StripeRequestBuilder:
        self._params["created[lte]"] = str(_unix(value))
        return self

    def with_created_lt(self, value: int | datetime) -> StripeRequestBuilder:
        self._params["created[lt]"] = str(_unix(value))
        return self

    def with_starting_after(self, object_id: str) -> StripeRequestBuilder:
        self._params["starting_after"] = object_id
        return self

    def with_expand(self, *paths: str) -> StripeRequestBuilder:
        existing = self._params.get("expand[]", [])
        self._params["expand[]"] = [*([existing] if isinstance(existing, str) else existing), *paths]
        return self

    def with_types(self, *event_types: str) -> StripeRequestBuilder:
        existing = self._params.get("types[]", [])
        self._params["types[]"] = [*([existing] if isinstance(existing, str) else existing), *event_types]
        return self

    def with_param(self, name: str, value: str | int | list[str]) -> StripeRequestBuilder:
        self._params[name] = value if isinstance(value, list) else str(value)
        return self

    def with_any_query_params(self) -> StripeRequestBuilder:
        self._any_params = True
        return self

    def with_header(self, name: str, value: str) -> StripeRequestBuilder:
        self._headers[name] = value
        return self

    @property
    def url(self) -> str:
        return f"{self._base_url}{self._path}"

    def query_params(self) -> dict[str, str | list[str]]:
        return copy.deepcopy(self._params)

    def build(self) -> HttpRequest:
        from airbyte_cdk.test.mock_http.request import ANY_QUERY_PARAMS

        params: Any = ANY_QUERY_PARAMS if self._any_params else (self.query_params() or None)
        return HttpRequest(self.url, query_params=params, headers=self._headers or None)


def _unix(value: int | datetime) -> int:
    return int(value.timestamp()) if isinstance(value, datetime) else int(value)


# ------------------------------------------------------------------------------------------- records


_fixtures_cache: dict[str, Any] | None = None


def stripe_fixture(object_name: str) -> dict[str, Any]:
    """A deep copy of Stripe's example object (`customer`, `subscription`, `invoice`, ...)."""
    global _fixtures_cache
    if _fixtures_cache is None:
        _fixtures_cache = json.loads(shared_file("stripe", "fixtures3.json").read_text())["resources"]
    return copy.deepcopy(_fixtures_cache[object_name])


class RecordBuilder:
    """A Stripe object: `RecordBuilder("customer").with_id("cus_1").with_created(t).build()`.

    Starts minimal (`id`, `object`, `created`, `livemode`); `.from_fixture()` starts from Stripe's
    complete example object instead.
    """

    _counter = 0

    def __init__(self, object_name: str, template: dict[str, Any] | None = None) -> None:
        RecordBuilder._counter += 1
        prefix = _ID_PREFIXES.get(object_name, object_name[:3])
        self._record: dict[str, Any] = template or {
            "id": f"{prefix}_{RecordBuilder._counter:06d}",
            "object": object_name,
            "created": DEFAULT_NOW - 86400,
            "livemode": False,
        }
        self._record["object"] = object_name

    @classmethod
    def from_fixture(cls, object_name: str) -> RecordBuilder:
        return cls(object_name, stripe_fixture(object_name))

    def with_id(self, object_id: str) -> RecordBuilder:
        self._record["id"] = object_id
        return self

    def with_created(self, created: int | datetime) -> RecordBuilder:
        self._record["created"] = _unix(created)
        return self

    def with_field(self, path: str, value: Any) -> RecordBuilder:
        """Set a field; dotted paths create nested objects (`"parent.subscription_details.subscription"`)."""
        target = self._record
        *parents, leaf = path.split(".")
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = value
        return self

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self._record)


_ID_PREFIXES = {
    "customer": "cus",
    "subscription": "sub",
    "invoice": "in",
    "charge": "ch",
    "coupon": "co",
    "price": "price",
    "product": "prod",
    "event": "evt",
    "account": "acct",
}


class ListResponseBuilder:
    """A Stripe list page: `ListResponseBuilder("/v1/customers").with_records(recs).with_has_more(True)`."""

    def __init__(self, url: str = "/v1/customers") -> None:
        self._url = url
        self._records: list[dict[str, Any]] = []
        self._has_more = False
        self._headers: dict[str, str] = {}

    def with_record(self, record: dict[str, Any] | RecordBuilder) -> ListResponseBuilder:
        self._records.append(record.build() if isinstance(record, RecordBuilder) else record)
        return self

    def with_records(self, records: Iterable[dict[str, Any] | RecordBuilder]) -> ListResponseBuilder:
        for record in records:
            self.with_record(record)
        return self

    def with_has_more(self, has_more: bool = True) -> ListResponseBuilder:
        self._has_more = has_more
        return self

    def with_server_time(self, unix_seconds: int) -> ListResponseBuilder:
        """Sets the `Date` header (the server clock the source reads)."""
        self._headers["Date"] = http_date(unix_seconds)
        return self

    def with_header(self, name: str, value: str) -> ListResponseBuilder:
        self._headers[name] = value
        return self

    def build(self) -> dict[str, Any]:
        return {"object": "list", "url": self._url, "has_more": self._has_more, "data": list(self._records)}

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def build_http_response(self, status_code: int = 200) -> HttpResponse:
        return HttpResponse(orjson.dumps(self.build()).decode(), status_code, self.headers())


def list_response(records: Iterable[dict[str, Any]] = (), has_more: bool = False, url: str = "/v1/x") -> dict:
    """Shorthand for a one-page list body."""
    return ListResponseBuilder(url).with_records(records).with_has_more(has_more).build()


# -------------------------------------------------------------------------------------------- errors


class ErrorResponseBuilder:
    """A Stripe error body and status: `ErrorResponseBuilder(404).with_code("resource_missing")...`."""

    def __init__(self, status_code: int, message: str = "An error occurred.") -> None:
        self.status_code = status_code
        self._error: dict[str, Any] = {
            "type": "api_error" if status_code >= 500 else "invalid_request_error",
            "message": message,
        }
        self._headers: dict[str, str] = {"Request-Id": "req_builder0001"}

    def with_message(self, message: str) -> ErrorResponseBuilder:
        self._error["message"] = message
        return self

    def with_type(self, error_type: str) -> ErrorResponseBuilder:
        self._error["type"] = error_type
        return self

    def with_code(self, code: str) -> ErrorResponseBuilder:
        self._error["code"] = code
        self._error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        return self

    def with_param(self, param: str) -> ErrorResponseBuilder:
        self._error["param"] = param
        return self

    def with_request_id(self, request_id: str) -> ErrorResponseBuilder:
        self._headers["Request-Id"] = request_id
        return self

    def with_header(self, name: str, value: str) -> ErrorResponseBuilder:
        self._headers[name] = value
        return self

    def with_retry_after(self, seconds: float) -> ErrorResponseBuilder:
        self._headers["Retry-After"] = str(seconds)
        return self

    def with_should_retry(self, should_retry: bool) -> ErrorResponseBuilder:
        self._headers["Stripe-Should-Retry"] = "true" if should_retry else "false"
        return self

    def build(self) -> dict[str, Any]:
        return {"error": dict(self._error)}

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def build_http_response(self) -> HttpResponse:
        return HttpResponse(orjson.dumps(self.build()).decode(), self.status_code, self.headers())

    def as_requests_mock(self) -> dict[str, Any]:
        """Keyword arguments for `requests_mock` registration: `m.get(url, **err.as_requests_mock())`."""
        return {"status_code": self.status_code, "json": self.build(), "headers": self.headers()}


def _stripe_masked(key: str) -> str:
    # How Stripe echoes a key in its messages: a prefix, stars, and the last 4 characters.
    return f"{key[:8]}{'*' * 12}{key[-4:]}"


def invalid_api_key_error(key: str = TEST_SECRET_KEY) -> ErrorResponseBuilder:
    """401 for an unknown or revoked key (Stripe sends no `code`)."""
    return ErrorResponseBuilder(401, f"Invalid API Key provided: {_stripe_masked(key)}").with_header(
        "Www-Authenticate", 'Basic realm="Stripe"'
    )


def expired_api_key_error(key: str = TEST_RESTRICTED_KEY) -> ErrorResponseBuilder:
    """401 for an expired or rolled key (`code: api_key_expired`)."""
    return ErrorResponseBuilder(401, f"Expired API Key provided: {key[:8]}***{key[-6:]}").with_code(
        "api_key_expired"
    )


def permission_error(
    permission: str, key: str = TEST_RESTRICTED_KEY, account_id: str = ACCOUNT_ID
) -> ErrorResponseBuilder:
    """403 for a restricted key that lacks `permission` (e.g. `rak_event_read`)."""
    return ErrorResponseBuilder(
        403,
        f"The provided key '{key[:8]}***{key[-6:]}' does not have the required permissions for this "
        f"endpoint on account '{account_id}'. Having the '{permission}' permission would allow this "
        "request to continue.",
    )


def resource_missing_error(
    message: str = "No such customer: 'cus_missing'", param: str = "id"
) -> ErrorResponseBuilder:
    return ErrorResponseBuilder(404, message).with_code("resource_missing").with_param(param)


def bad_request_error(message: str = "Invalid integer: abc", param: str = "limit") -> ErrorResponseBuilder:
    return ErrorResponseBuilder(400, message).with_code("parameter_invalid_integer").with_param(param)


def rate_limit_error(retry_after: float | None = None) -> ErrorResponseBuilder:
    builder = ErrorResponseBuilder(
        429,
        "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.",
    ).with_code("rate_limit")
    builder.with_header("Stripe-Rate-Limited-Reason", "global-rate")
    if retry_after is not None:
        builder.with_retry_after(retry_after)
    return builder


def lock_timeout_error() -> ErrorResponseBuilder:
    return ErrorResponseBuilder(
        429,
        "This object cannot be accessed right now because another API request or Stripe process is "
        "currently accessing it.",
    ).with_code("lock_timeout")


def server_error(status_code: int = 500) -> ErrorResponseBuilder:
    return ErrorResponseBuilder(status_code, "An unknown error occurred")


def account_response(
    account_id: str = ACCOUNT_ID, livemode: bool | None = None, **fields: Mapping[str, Any] | Any
) -> dict[str, Any]:
    """A `GET /v1/account` body. Stripe's account object has no `livemode`; tests may add one."""
    body: dict[str, Any] = {"id": account_id, "object": "account", "country": "US", "default_currency": "usd"}
    if livemode is not None:
        body["livemode"] = livemode
    body.update(fields)
    return body
