"""The source's one HTTP client for Stripe: GET only, pinned API version, a shared request budget, retries.

Every request the source makes goes through `StripeClient.get`. The client is thread-safe: stream
workers share one instance, one connection pool and one token bucket.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import logging
import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import orjson
import requests
from requests.adapters import HTTPAdapter

from stripe_vocabulary import API_VERSION

DEFAULT_BASE_URL = "https://api.stripe.com"

# Stripe's global read limits by key mode; we take 90% so the account's own traffic keeps a share;
# a 429 still pauses every thread (Retry-After) and concurrency 429s shrink the pool.
STRIPE_RATE_LIMITS = {"live": 100.0, "test": 25.0}
BUDGET_SHARE = 0.9

USER_AGENT = "perly-stripe-source/0.1 (+airbyte)"
CONNECT_TIMEOUT = 10.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0

# Real keys are alphanumeric after the prefix; underscores are allowed too for the emulator's named keys
# (sk_test_perly_demo, rk_test_perly_billing, ... in docs/DESIGN.md).
_KEY_RE = re.compile(r"^(sk|rk)_(live|test)_[A-Za-z0-9_]+$")
# Anything that looks like a Stripe key (possibly already masked by Stripe) inside a message.
_KEY_IN_TEXT_RE = re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9_*…]+")
_PERMISSION_RE = re.compile(r"\b(rak_[a-z0-9_]+)\b")
_RETRYABLE_STATUSES = frozenset({409, 500, 502, 503, 504})

logger_default = logging.getLogger("source_perly_stripe.client")


# ------------------------------------------------------------------------------------------- errors


class StripeError(Exception):
    """A failed Stripe request. `message` is human-readable and never contains the API key."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.path = path

    def __str__(self) -> str:
        return self.message


class StripeAuthError(StripeError):
    """401: the key is invalid, revoked or expired."""


class StripePermissionError(StripeError):
    """403: a restricted key lacks a permission (`permission` is the `rak_...` slug when Stripe names it)."""

    def __init__(self, message: str, *, permission: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.permission = permission


class StripeNotFoundError(StripeError):
    """404: an unknown object or URL (also an unknown or stale `starting_after` cursor)."""


class StripeRequestError(StripeError):
    """Any other 4xx: the request itself is wrong; retrying will not help."""


class StripeTransientError(StripeError):
    """Retries were exhausted on 429s, 5xx, network errors or broken bodies; a later run may succeed."""


class StripeResponseError(StripeError):
    """A 200 answer that is not what Stripe sends (a list without a `data` list, an object without `id`
    or `created`, a cursor that does not move): retrying will not help, and reading on could loop or
    emit records without an id."""


class ReadOnlyViolation(RuntimeError):
    """Something tried to send a non-GET request to Stripe. Perly never writes to Stripe."""


# ---------------------------------------------------------------------------------------------- keys


def validate_api_key(key: object) -> str | None:
    """None when `key` looks like a usable secret or restricted key, else a message (never echoing it)."""
    if not isinstance(key, str) or not key.strip():
        return "A Stripe API key is required: paste a secret key (sk_...) or a restricted key (rk_...)."
    key = key.strip()
    if _KEY_RE.match(key):
        return None
    where = "Stripe Dashboard > Developers > API keys"
    if key.startswith(("pk_live_", "pk_test_")):
        return (
            "This is a publishable key (pk_...). It can only be used in a browser and cannot read billing "
            "data. Paste a secret key (sk_live_/sk_test_) or a restricted key (rk_live_/rk_test_) from "
            f"{where}."
        )
    if key.startswith("whsec_"):
        return (
            "This is a webhook signing secret (whsec_...), not an API key. Paste a secret or restricted "
            f"key from {where}."
        )
    if key.startswith("acct_"):
        return (
            "This is a Stripe account id (acct_...), not an API key. Put it in the Connected account field."
        )
    if key.startswith(("sk_", "rk_")) and any(ch.isspace() for ch in key):
        return (
            "The API key is malformed: it has a space, tab or line break inside it (around it is fine). "
            f"Copy the key again from {where}."
        )
    if key.startswith(("sk_", "rk_")):
        return (
            "The API key is malformed: it should be sk_ or rk_, then live_ or test_, then letters, digits "
            "and underscores only (check for spaces, quotes or a truncated copy)."
        )
    return (
        "This does not look like a Stripe API key: it must start with sk_live_, sk_test_, rk_live_ or "
        f"rk_test_. Copy a secret or restricted key from {where}."
    )


def mask_key(key: object) -> str:
    """A form of the key safe for messages: its kind and mode prefix and last 4 characters at most."""
    if not isinstance(key, str) or not key:
        return "<no key>"
    key = key.strip()
    match = re.match(r"^((?:sk|rk|pk)_(?:live|test)_)(.*)$", key)
    prefix, rest = (match.group(1), match.group(2)) if match else ("", key)
    tail = rest[-4:] if len(rest) >= 16 else ""
    return f"{prefix}…{tail}"


def key_mode(key: str) -> Literal["live", "test"]:
    return "live" if key.strip()[3:8] == "live_" else "test"


def _redact(text: str, key: str) -> str:
    """Removes the key (and anything key-like Stripe echoed) from a server message."""
    if key:
        text = text.replace(key, mask_key(key))
    return _KEY_IN_TEXT_RE.sub(lambda m: mask_key(m.group(0)) if "*" not in m.group(0) else m.group(0), text)


# -------------------------------------------------------------------------------------------- budget


class TokenBucket:
    """At most `rate` requests (rounded up) in any one second across threads, spaced 1/rate apart.

    A slot left unused while no request waited (the first round trip, answers on their way) may be
    taken later: up to a tenth of a second's worth go at once (9 at 90/s; below 15/s one, no catching
    up). Each slot is still at least one second after the one `ceil(rate)` slots before it, so no
    second holds more than the budget. Each caller reserves its slot under the lock, sleeps outside
    it until its slot, and sends once the second before it holds fewer than the budget.
    """

    def __init__(self, rate: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # How many slots ahead of the even spacing one may be taken: a tenth of a second's worth go at once.
        self._credit = max(1, round(rate / 10)) - 1
        self._due = float("-inf")  # the next slot on the even spacing
        self._most = math.ceil(rate)  # requests in any one second
        self._recent: deque[float] = deque(maxlen=self._most)  # the last slots, oldest first
        self._sent: deque[float] = deque(maxlen=self._most)  # when the last requests went

    def acquire(self) -> float:
        """Blocks until this caller may send; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._due - self._credit * self._interval)
            if len(self._recent) == self._most:
                slot = max(slot, self._recent[0] + 1.0)
            self._recent.append(slot)
            self._due = max(self._due, slot) + self._interval
        waited = max(slot - now, 0.0)
        if waited > 0:
            self._sleep(waited)
        while True:
            # A caller that woke late (a loaded machine) would send in the second of later slots: it
            # waits until the second before it holds fewer than the budget (a few ms when on time).
            with self._lock:
                now = self._clock()
                free_at = self._sent[0] + 1.0 if len(self._sent) == self._most else now
                if now >= free_at:
                    self._sent.append(now)
                    return waited
            self._sleep(free_at - now)
            waited += free_at - now

    def pause_until(self, when: float) -> None:
        """Holds every caller back until `when` (after a 429 tells us the server needs a break)."""
        with self._lock:  # and evenly spaced from then on: no burst right after a 429
            self._due = max(self._due, when + self._credit * self._interval)


class ConcurrencyLimit:
    """Caps requests in flight; halves the cap when Stripe says we hit its concurrency limiter.

    Stripe publishes no concurrency number, so the cap starts at the pool size and adapts: a
    `*-concurrency` 429 halves it (not below `floor`), and every `recover_after` successes add one back.
    """

    def __init__(self, ceiling: int, floor: int = 2, recover_after: int = 50) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = min(floor, self.ceiling)
        self.limit = self.ceiling
        self._recover_after = recover_after
        self._successes = 0
        self._in_flight = 0
        self._condition = threading.Condition()

    def __enter__(self) -> None:
        with self._condition:
            while self._in_flight >= self.limit:
                self._condition.wait()
            self._in_flight += 1

    def __exit__(self, *exc: object) -> None:
        with self._condition:
            self._in_flight -= 1
            self._condition.notify()

    def on_success(self) -> None:
        if self.limit >= self.ceiling:
            return
        with self._condition:
            self._successes += 1
            if self._successes >= self._recover_after:
                self._successes = 0
                self.limit = min(self.ceiling, self.limit + 1)
                self._condition.notify()

    def on_concurrency_limited(self) -> None:
        with self._condition:
            self.limit = max(self.floor, self.limit // 2)
            self._successes = 0


# --------------------------------------------------------------------------------------------- stats


class ClientStats:
    """Thread-safe request counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.by_status: Counter[int | str] = Counter()
        self.waited_seconds = 0.0

    def record(self, status: int | str) -> None:
        with self._lock:
            self.requests += 1
            self.by_status[status] += 1

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_wait(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self.waited_seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "by_status": dict(self.by_status),
                "waited_seconds": round(self.waited_seconds, 3),
            }

    def __repr__(self) -> str:
        return f"ClientStats({self.snapshot()})"


# --------------------------------------------------------------------------------------- transport


class _GetOnlyAdapter(HTTPAdapter):
    """Refuses anything but GET at the last step before the wire."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if request.method != "GET":
            raise ReadOnlyViolation(
                f"Refused {request.method} {request.path_url}: Perly only reads from Stripe."
            )
        return super().send(request, *args, **kwargs)


class _ReadOnlySession(requests.Session):
    """A session that only sends GET (checked here and again in every mounted adapter)."""

    def __init__(self, pool_size: int) -> None:
        self._sealed = False  # requests.Session.__init__ mounts its default adapters; ours replace them
        super().__init__()
        adapter = _GetOnlyAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.adapters.clear()
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self._sealed = True
        # Stripe sets no cookies we need; a cookie jar that stores nothing saves work and shared state.
        self.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self.trust_env = False  # no ~/.netrc auth or proxy env surprises

    def mount(self, prefix: str | bytes, adapter: Any) -> None:
        if self._sealed and not isinstance(adapter, _GetOnlyAdapter):
            raise ReadOnlyViolation("Only the GET-only adapter may be mounted on the Stripe session.")
        super().mount(prefix, adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        verb = method.decode() if isinstance(method, bytes) else method
        if verb.upper() != "GET":
            raise ReadOnlyViolation(f"Refused {verb.upper()} request: Perly only reads from Stripe.")
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if request.method != "GET":
            raise ReadOnlyViolation(f"Refused {request.method} request: Perly only reads from Stripe.")
        return super().send(request, **kwargs)


# ------------------------------------------------------------------------------------------- client


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying."""

    def __init__(self, reason: str, error: StripeError, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.wait = wait


class StripeClient:
    """Reads from Stripe. `get(path, params)` returns the parsed JSON body or raises a `StripeError`."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        account_id: str | None = None,
        max_requests_per_second: float | None = None,
        max_retries: int = 6,
        timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
        pool_size: int = 32,
        rng: random.Random | None = None,
    ) -> None:
        problem = validate_api_key(api_key)
        if problem:
            raise StripeAuthError(problem)
        self._api_key = api_key.strip()
        self.mode: Literal["live", "test"] = key_mode(self._api_key)
        self.key_kind: Literal["secret", "restricted"] = (
            "restricted" if self._api_key.startswith("rk_") else "secret"
        )
        self.masked_key = mask_key(self._api_key)
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.account_id = account_id or None
        self.max_retries = max_retries
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.logger = logger or logger_default
        rate = max_requests_per_second or STRIPE_RATE_LIMITS[self.mode] * BUDGET_SHARE
        self.budget = TokenBucket(rate, clock, sleep)
        self.concurrency = ConcurrencyLimit(pool_size)
        self.stats = ClientStats()
        self._date_lock = threading.Lock()
        self._last_date_header: str | None = None
        self._last_server_time: int | None = None

        self.session = _ReadOnlySession(pool_size)
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Stripe-Version": API_VERSION,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
        }
        if self.account_id:
            headers["Stripe-Account"] = self.account_id
        self.session.headers.clear()
        self.session.headers.update(headers)

    def __repr__(self) -> str:
        return f"StripeClient(key={self.masked_key}, base_url={self.base_url!r}, mode={self.mode})"

    @property
    def requests_per_second(self) -> float:
        return self.budget.rate

    def close(self) -> None:
        self.session.close()

    # -- the one way to talk to Stripe

    def get(self, path: str, params: Sequence[tuple[str, str | int]] = ()) -> dict[str, Any]:
        url = f"{self.base_url}{path}" if path.startswith("/") else f"{self.base_url}/{path}"
        attempt = 0
        while True:
            try:
                return self._attempt(url, path, params)
            except _Retry as retry:
                if attempt >= self.max_retries:
                    raise StripeTransientError(
                        f"Stripe request GET {path} still failing after {attempt + 1} attempts "
                        f"({retry.reason}). {retry.error.message}",
                        status=retry.error.status,
                        code=retry.error.code,
                        request_id=retry.error.request_id,
                        path=path,
                    ) from None
                attempt += 1
                delay = retry.wait if retry.wait is not None else self._backoff(attempt)
                self.stats.record_retry()
                self.logger.info(
                    "Retrying GET %s in %.2fs (attempt %d of %d): %s",
                    path,
                    delay,
                    attempt + 1,
                    self.max_retries + 1,
                    retry.reason,
                )
                if retry.wait is not None:
                    # The server asked for a pause: hold every thread back (the next acquire waits it out).
                    self.budget.pause_until(self._clock() + delay)
                else:
                    self._sleep(delay)

    def server_now(self) -> int:
        """The server's clock (newest `Date` header seen), or the injected clock before any response."""
        with self._date_lock:
            if self._last_server_time is not None:
                return self._last_server_time
        return int(self._clock())

    # -- internals

    def _backoff(self, attempt: int) -> float:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1))
        jitter: float = 0.5 + self._rng.random() / 2  # 50-100%: threads do not retry in step
        return ceiling * jitter

    def _attempt(self, url: str, path: str, params: Sequence[tuple[str, str | int]]) -> dict[str, Any]:
        try:
            # A request slot first, then its turn in the budget: no budget slot is spent waiting for a slot.
            with self.concurrency:
                self.stats.record_wait(self.budget.acquire())
                response = self.session.get(url, params=params, timeout=self.timeout)
        except ReadOnlyViolation:
            raise
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise StripeRequestError(
                f"Invalid Stripe URL for GET {path}: {type(exc).__name__}", path=path
            ) from None
        except requests.exceptions.RequestException as exc:
            # Connection refused/reset, timeouts, broken chunked bodies: all worth another try.
            self.stats.record("network")
            reason = f"{type(exc).__name__} talking to {self.base_url}"
            raise _Retry(reason, StripeError(f"Network error: {reason}.", path=path)) from None

        status = response.status_code
        self.stats.record(status)
        self._note_server_time(response.headers.get("Date"))
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("GET %s -> %s (%d bytes)", path, status, len(response.content))
        if status == 200:
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise _Retry(
                    "truncated or invalid JSON body",
                    StripeError("Stripe sent a response that is not valid JSON.", status=status, path=path),
                ) from None
            if not isinstance(body, dict):
                raise _Retry(
                    "unexpected JSON body",
                    StripeError("Stripe sent an unexpected body.", status=status, path=path),
                )
            self.concurrency.on_success()
            return body
        error = self._error_from_response(response, path)
        limited_by = response.headers.get("Stripe-Rate-Limited-Reason") or ""
        if status == 429 and limited_by.endswith("concurrency"):
            self.concurrency.on_concurrency_limited()
        should_retry = response.headers.get("Stripe-Should-Retry")
        # A rate limit is about pace, so it is always retried; otherwise Stripe's "do not retry" wins.
        if should_retry == "false" and status != 429:
            raise error
        if status == 429 or status in _RETRYABLE_STATUSES or should_retry == "true":
            raise _Retry(
                f"HTTP {status}{f' {error.code}' if error.code else ''}", error, self._server_wait(response)
            )
        raise error

    def _server_wait(self, response: requests.Response) -> float | None:
        """Seconds the server asked us to wait (Retry-After, or a rate-limit reset header), capped."""
        headers = response.headers
        value = headers.get("Retry-After")
        if value:
            try:
                return min(max(float(value), 0.0), 300.0)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(value).timestamp()
                    return min(max(when - self._clock(), 0.0), 300.0)
                except (TypeError, ValueError):
                    pass
        for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
            reset = headers.get(name)
            if reset:
                try:
                    seconds = float(reset)
                except ValueError:
                    continue
                # Some servers send seconds-to-wait, others an epoch: treat large values as an epoch.
                wait = seconds - self._clock() if seconds > 1e9 else seconds
                return min(max(wait, 0.0), 300.0)
        return None

    def _note_server_time(self, date_header: str | None) -> None:
        if not date_header:
            return
        with self._date_lock:
            if date_header == self._last_date_header:
                return
        try:
            parsed = int(email.utils.parsedate_to_datetime(date_header).timestamp())
        except (TypeError, ValueError):
            return
        with self._date_lock:
            self._last_date_header = date_header
            # Threads finish out of order: never let an older response move the server clock back.
            if self._last_server_time is None or parsed > self._last_server_time:
                self._last_server_time = parsed

    def _error_from_response(self, response: requests.Response, path: str) -> StripeError:
        status = response.status_code
        request_id = response.headers.get("Request-Id")
        stripe_error = _parse_error_body(response.content)
        code = _text_field(stripe_error, "code") or None
        raw_message = _text_field(stripe_error, "message")
        server_message = _redact(raw_message, self._api_key)
        common: dict[str, Any] = {"status": status, "code": code, "request_id": request_id, "path": path}
        suffix = f" (request {request_id})" if request_id else ""

        if status == 401:
            return StripeAuthError(self._auth_message(code, raw_message) + suffix, **common)
        if status == 403:
            return self._permission_error(raw_message, server_message, path, suffix, common)
        if status == 404:
            return StripeNotFoundError(
                f"Not found: GET {path}: {server_message or 'no such resource'}{suffix}", **common
            )
        if status == 429:
            kind = "lock timeout" if code == "lock_timeout" else "rate limited"
            reason = response.headers.get("Stripe-Rate-Limited-Reason")
            detail = f" ({reason})" if reason else ""
            return StripeTransientError(f"Stripe {kind}{detail} on GET {path}.{suffix}", **common)
        if status >= 500 or status == 409:
            return StripeTransientError(f"Stripe server error {status} on GET {path}.{suffix}", **common)
        return StripeRequestError(
            f"Stripe refused GET {path} ({status}): {server_message or 'bad request'}{suffix}", **common
        )

    def _auth_message(self, code: str | None, raw_message: str) -> str:
        key = self.masked_key
        where = "Create or roll a key in Stripe Dashboard > Developers > API keys and update the connection."
        if code == "api_key_expired" or raw_message.lower().startswith("expired api key"):
            return f"The Stripe API key {key} has expired (it was rolled or reached its expiry date). {where}"
        if "did not provide an api key" in raw_message.lower():
            return f"Stripe received no API key. {where}"
        return (
            f"Stripe rejected the API key {key}: it is not a valid {self.mode}-mode key, or it was deleted "
            f"(revoked). {where}"
        )

    def _permission_error(
        self, raw_message: str, server_message: str, path: str, suffix: str, common: dict[str, Any]
    ) -> StripePermissionError:
        match = _PERMISSION_RE.search(raw_message)
        permission = match.group(1) if match else None
        if permission:
            message = (
                f"The restricted key {self.masked_key} lacks the '{permission}' permission "
                f"needed for GET {path}."
            )
        elif "publishable" in raw_message.lower():
            message = "A publishable key (pk_...) cannot read billing data: use a secret or restricted key."
        elif self.account_id and "account" in raw_message.lower():
            message = (
                f"The key {self.masked_key} has no access to the connected account {self.account_id} "
                f"(wrong account id, or the platform's access was revoked): {server_message}"
            )
        else:
            message = f"Permission denied for GET {path}: {server_message or 'forbidden'}"
        return StripePermissionError(message + suffix, permission=permission, **common)


def _parse_error_body(content: bytes) -> Mapping[str, Any]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _text_field(error: Mapping[str, Any], name: str) -> str:
    value = error.get(name)
    return value if isinstance(value, str) else ""


def client_from_config(config: Mapping[str, Any], **overrides: Any) -> StripeClient:
    """A client built from the connector config: api_key, base_url, account_id, max_requests_per_second."""
    options: dict[str, Any] = {
        "base_url": config.get("base_url") or DEFAULT_BASE_URL,
        "account_id": config.get("account_id") or None,
        "max_requests_per_second": config.get("max_requests_per_second") or None,
    }
    options.update(overrides)
    return StripeClient(str(config.get("api_key") or ""), **options)
