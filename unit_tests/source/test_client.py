"""The Stripe HTTP client: auth, version pin, GET-only, errors, retries, budget, server clock, secrets."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest
import requests
import requests_mock as rm
from hypothesis import given, settings
from hypothesis import strategies as st

from source_perly_stripe.client import (
    API_VERSION,
    ConcurrencyLimit,
    ReadOnlyViolation,
    StripeAuthError,
    StripeClient,
    StripeError,
    StripeNotFoundError,
    StripePermissionError,
    StripeRequestError,
    StripeTransientError,
    TokenBucket,
    client_from_config,
    mask_key,
)
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
    bad_request_error,
    expired_api_key_error,
    http_date,
    invalid_api_key_error,
    lock_timeout_error,
    permission_error,
    rate_limit_error,
    resource_missing_error,
    server_error,
)

CUSTOMERS_URL = f"{DEFAULT_BASE_URL}/v1/customers"


class FakeClock:
    """Simulated time: `sleep` advances `now` instead of waiting. Thread-safe."""

    def __init__(self, start: float = 1_793_491_200.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def make_client(
    clock: FakeClock | None = None, key: str = TEST_SECRET_KEY, **options: object
) -> StripeClient:
    clock = clock or FakeClock()
    options.setdefault("max_requests_per_second", 1000.0)
    return StripeClient(key, clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]


def a_page() -> dict:
    return (
        ListResponseBuilder("/v1/customers").with_record(RecordBuilder("customer").with_id("cus_1")).build()
    )


# ------------------------------------------------------------------------------------- headers


def test_given_secret_key_when_get_then_sends_bearer_auth_and_pinned_version(
    requests_mock: rm.Mocker,
) -> None:
    requests_mock.get(CUSTOMERS_URL, json=a_page())

    body = make_client().get("/v1/customers", [("limit", 100)])

    sent = requests_mock.last_request
    assert body["data"][0]["id"] == "cus_1"
    assert sent.headers["Authorization"] == f"Bearer {TEST_SECRET_KEY}"
    assert sent.headers["Stripe-Version"] == API_VERSION == "2026-10-28.endive"
    assert "Stripe-Account" not in sent.headers
    assert sent.qs == {"limit": ["100"]}


def test_pinned_version_matches_the_stripe_library() -> None:
    import stripe

    assert stripe.api_version == API_VERSION


def test_given_account_id_when_get_then_sends_stripe_account_header(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, json=a_page())

    make_client(account_id=ACCOUNT_ID).get("/v1/customers")

    assert requests_mock.last_request.headers["Stripe-Account"] == ACCOUNT_ID


def test_given_repeated_params_when_get_then_all_are_sent_in_order(requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{DEFAULT_BASE_URL}/v1/subscriptions", json=a_page())

    make_client().get(
        "/v1/subscriptions",
        [
            ("status", "all"),
            ("expand[]", "data.discounts"),
            ("expand[]", "data.customer"),
            ("created[gte]", 5),
        ],
    )

    assert requests_mock.last_request.qs == {
        "status": ["all"],
        "expand[]": ["data.discounts", "data.customer"],
        "created[gte]": ["5"],
    }


def test_every_request_of_a_session_carries_the_version_header(requests_mock: rm.Mocker) -> None:
    requests_mock.get(rm.ANY, json=a_page())
    client = make_client()

    for path in ("/v1/customers", "/v1/invoices", "/v1/events", "/v1/account"):
        client.get(path)

    assert [r.headers["Stripe-Version"] for r in requests_mock.request_history] == [API_VERSION] * 4
    assert {r.method for r in requests_mock.request_history} == {"GET"}


def test_given_custom_base_url_when_get_then_requests_go_there(requests_mock: rm.Mocker) -> None:
    requests_mock.get("http://127.0.0.1:8123/v1/customers", json=a_page())

    client = client_from_config(ConfigBuilder().with_base_url("http://127.0.0.1:8123/").build())
    client.get("/v1/customers")

    assert requests_mock.call_count == 1


# ------------------------------------------------------------------------------------ GET only


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_given_any_write_method_when_called_on_the_session_then_refused_before_sending(
    requests_mock: rm.Mocker, method: str
) -> None:
    requests_mock.register_uri(rm.ANY, rm.ANY, json={})
    client = make_client()

    with pytest.raises(ReadOnlyViolation):
        getattr(client.session, method)(CUSTOMERS_URL, data={"email": "x@example.com"})

    assert requests_mock.call_count == 0


def test_given_prepared_post_when_sent_through_the_session_then_refused(requests_mock: rm.Mocker) -> None:
    requests_mock.register_uri(rm.ANY, rm.ANY, json={})
    client = make_client()
    prepared = client.session.prepare_request(requests.Request("POST", CUSTOMERS_URL, data={"a": "b"}))

    with pytest.raises(ReadOnlyViolation):
        client.session.send(prepared)

    assert requests_mock.call_count == 0


def test_given_post_handed_straight_to_the_transport_adapter_then_refused_without_connecting() -> None:
    client = make_client()
    # Port 9 (discard) on loopback: if the adapter tried to connect we would get a ConnectionError instead.
    prepared = requests.Request("POST", "http://127.0.0.1:9/v1/customers", data={"a": "b"}).prepare()

    with pytest.raises(ReadOnlyViolation):
        client.session.get_adapter("http://127.0.0.1:9").send(prepared)


def test_given_someone_mounts_a_plain_adapter_then_refused() -> None:
    client = make_client()

    with pytest.raises(ReadOnlyViolation):
        client.session.mount("https://", requests.adapters.HTTPAdapter())


def test_refused_write_names_the_method_but_not_the_key(requests_mock: rm.Mocker) -> None:
    client = make_client()

    with pytest.raises(ReadOnlyViolation) as caught:
        client.session.post(f"{CUSTOMERS_URL}?api_key={TEST_SECRET_KEY}")

    assert "POST" in str(caught.value)
    assert TEST_SECRET_KEY not in str(caught.value)


# -------------------------------------------------------------------------------------- errors


def test_given_401_invalid_key_then_auth_error_says_invalid_or_revoked(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, **invalid_api_key_error(LIVE_SECRET_KEY).as_requests_mock())

    with pytest.raises(StripeAuthError) as caught:
        make_client(key=LIVE_SECRET_KEY).get("/v1/customers")

    message = str(caught.value)
    assert "revoked" in message
    assert "not a valid live-mode key" in message
    assert mask_key(LIVE_SECRET_KEY) in message
    assert caught.value.status == 401
    assert requests_mock.call_count == 1  # never retried


def test_given_401_expired_key_then_auth_error_says_expired(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, **expired_api_key_error(TEST_RESTRICTED_KEY).as_requests_mock())

    with pytest.raises(StripeAuthError) as caught:
        make_client(key=TEST_RESTRICTED_KEY).get("/v1/customers")

    assert "expired" in str(caught.value)
    assert "revoked" not in str(caught.value)
    assert caught.value.code == "api_key_expired"


def test_given_403_missing_permission_then_permission_slug_and_path_are_parsed(
    requests_mock: rm.Mocker,
) -> None:
    requests_mock.get(
        f"{DEFAULT_BASE_URL}/v1/events", **permission_error("rak_event_read").as_requests_mock()
    )

    with pytest.raises(StripePermissionError) as caught:
        make_client(key=TEST_RESTRICTED_KEY).get("/v1/events", [("limit", 100)])

    assert caught.value.permission == "rak_event_read"
    assert caught.value.path == "/v1/events"
    assert "rak_event_read" in str(caught.value)
    assert "/v1/events" in str(caught.value)
    assert requests_mock.call_count == 1


def test_given_404_resource_missing_then_not_found_error_without_retry(requests_mock: rm.Mocker) -> None:
    error = resource_missing_error("No such customer: 'cus_gone'", param="starting_after")
    requests_mock.get(CUSTOMERS_URL, **error.as_requests_mock())

    with pytest.raises(StripeNotFoundError) as caught:
        make_client().get("/v1/customers", [("starting_after", "cus_gone")])

    assert caught.value.code == "resource_missing"
    assert "cus_gone" in str(caught.value)
    assert caught.value.request_id == "req_builder0001"
    assert requests_mock.call_count == 1


def test_given_400_then_request_error_with_stripe_reason(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, **bad_request_error("Invalid integer: abc").as_requests_mock())

    with pytest.raises(StripeRequestError) as caught:
        make_client().get("/v1/customers", [("limit", "abc")])

    assert "Invalid integer: abc" in str(caught.value)
    assert caught.value.status == 400
    assert requests_mock.call_count == 1


# ------------------------------------------------------------------------------------- retries


def test_given_429_with_retry_after_then_waits_that_long_and_succeeds(requests_mock: rm.Mocker) -> None:
    clock = FakeClock()
    requests_mock.get(
        CUSTOMERS_URL,
        [rate_limit_error(retry_after=7).as_requests_mock(), {"json": a_page(), "status_code": 200}],
    )
    client = make_client(clock)

    body = client.get("/v1/customers")

    assert body["object"] == "list"
    assert 7 in clock.sleeps
    assert client.stats.snapshot()["retries"] == 1
    assert client.stats.snapshot()["by_status"] == {429: 1, 200: 1}


def test_given_429_retry_after_then_other_callers_are_held_back_too(requests_mock: rm.Mocker) -> None:
    frozen = FakeClock()
    waits: list[float] = []
    requests_mock.get(CUSTOMERS_URL, [rate_limit_error(retry_after=5).as_requests_mock(), {"json": a_page()}])
    client = StripeClient(TEST_SECRET_KEY, max_requests_per_second=100, clock=frozen, sleep=waits.append)

    client.get("/v1/customers")

    assert waits == [5.0]  # the retry waited out the server's pause...
    assert client.budget.acquire() >= 5.0  # ...and so does the next caller from any thread


def test_given_429_without_retry_after_then_exponential_backoff_with_jitter(requests_mock: rm.Mocker) -> None:
    clock = FakeClock()
    requests_mock.get(
        CUSTOMERS_URL,
        [rate_limit_error().as_requests_mock()] * 3 + [{"json": a_page()}],
    )

    make_client(clock).get("/v1/customers")

    assert len(clock.sleeps) == 3
    for attempt, slept in enumerate(clock.sleeps, start=1):
        ceiling = 0.5 * 2 ** (attempt - 1)
        assert ceiling / 2 <= slept <= ceiling


def test_given_lock_timeout_then_retried(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, [lock_timeout_error().as_requests_mock(), {"json": a_page()}])

    assert make_client().get("/v1/customers")["data"]


def test_given_5xx_then_success_then_returns_body(requests_mock: rm.Mocker) -> None:
    requests_mock.get(
        CUSTOMERS_URL,
        [server_error(500).as_requests_mock(), server_error(502).as_requests_mock(), {"json": a_page()}],
    )
    client = make_client()

    assert client.get("/v1/customers")["data"][0]["id"] == "cus_1"
    assert client.stats.snapshot()["retries"] == 2


def test_given_5xx_every_time_then_transient_error_after_max_retries(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, **server_error(503).as_requests_mock())

    with pytest.raises(StripeTransientError) as caught:
        make_client(max_retries=3).get("/v1/customers")

    assert requests_mock.call_count == 4
    assert caught.value.status == 503
    assert "4 attempts" in str(caught.value)
    assert "/v1/customers" in str(caught.value)


def test_given_stripe_should_retry_false_then_not_retried(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, **server_error(500).with_should_retry(False).as_requests_mock())

    with pytest.raises(StripeTransientError):
        make_client().get("/v1/customers")

    assert requests_mock.call_count == 1


def test_given_rate_limit_429_marked_do_not_retry_then_still_retried(requests_mock: rm.Mocker) -> None:
    # A rate limit is about pace: a backfill waits and goes on rather than failing the sync.
    limited = rate_limit_error(retry_after=1).with_should_retry(False)
    requests_mock.get(CUSTOMERS_URL, [limited.as_requests_mock(), {"json": a_page()}])

    assert make_client().get("/v1/customers")["data"]
    assert requests_mock.call_count == 2


def test_given_concurrency_429_then_fewer_requests_fly_at_once_and_the_cap_recovers(
    requests_mock: rm.Mocker,
) -> None:
    concurrency_limited = rate_limit_error().with_header("Stripe-Rate-Limited-Reason", "global-concurrency")
    requests_mock.get(CUSTOMERS_URL, [concurrency_limited.as_requests_mock()] + [{"json": a_page()}] * 200)
    client = make_client(pool_size=16)

    client.get("/v1/customers")
    assert client.concurrency.limit == 8

    for _ in range(150):
        client.get("/v1/customers")
    assert client.concurrency.limit == 11  # one back per 50 successes


def test_concurrency_limit_is_never_exceeded_by_threads() -> None:
    limit = ConcurrencyLimit(ceiling=3)
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal in_flight, peak
        with limit:
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.002)
            with lock:
                in_flight -= 1

    threads = [threading.Thread(target=work) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert peak == 3


def test_given_409_with_stripe_should_retry_true_then_retried(requests_mock: rm.Mocker) -> None:
    conflict = ErrorResponseBuilder(409, "conflict").with_should_retry(True)
    requests_mock.get(CUSTOMERS_URL, [conflict.as_requests_mock(), {"json": a_page()}])

    assert make_client().get("/v1/customers")["data"]
    assert requests_mock.call_count == 2


@pytest.mark.parametrize(
    "failure",
    [
        requests.exceptions.ConnectionError("Connection reset by peer"),
        requests.exceptions.ReadTimeout("slow"),
    ],
    ids=["connection_reset", "read_timeout"],
)
def test_given_network_failure_then_retried(requests_mock: rm.Mocker, failure: Exception) -> None:
    requests_mock.get(CUSTOMERS_URL, [{"exc": failure}, {"json": a_page()}])
    client = make_client()

    assert client.get("/v1/customers")["data"]
    assert client.stats.snapshot()["by_status"] == {"network": 1, 200: 1}


def test_given_network_failure_every_time_then_transient_error(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, exc=requests.exceptions.ConnectionError("refused"))

    with pytest.raises(StripeTransientError) as caught:
        make_client(max_retries=2).get("/v1/customers")

    assert "ConnectionError" in str(caught.value)
    assert requests_mock.call_count == 3


def test_given_truncated_json_then_retried_until_complete(requests_mock: rm.Mocker) -> None:
    requests_mock.get(
        CUSTOMERS_URL,
        [
            {"text": '{"object": "list", "data": [{"id": "cus_1"'},
            {"text": "<html>bad gateway</html>"},
            {"json": a_page()},
        ],
    )

    assert make_client().get("/v1/customers")["data"][0]["id"] == "cus_1"
    assert requests_mock.call_count == 3


def test_given_truncated_json_every_time_then_transient_error(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, text='{"object": "li')

    with pytest.raises(StripeTransientError, match="not valid JSON"):
        make_client(max_retries=1).get("/v1/customers")


# -------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    ("key", "configured", "expected"),
    [
        (LIVE_SECRET_KEY, None, 90.0),
        (TEST_SECRET_KEY, None, 22.5),
        (TEST_RESTRICTED_KEY, None, 22.5),
        (LIVE_SECRET_KEY, 5, 5.0),
    ],
    ids=["live_default", "test_default", "restricted_test_default", "configured"],
)
def test_budget_defaults_to_90_percent_of_stripes_limit_by_key_mode(
    key: str, configured: float | None, expected: float
) -> None:
    client = StripeClient(key, max_requests_per_second=configured)

    assert client.requests_per_second == expected


def test_given_rate_when_n_requests_then_they_take_at_least_n_minus_1_over_rate(
    requests_mock: rm.Mocker,
) -> None:
    clock = FakeClock()
    requests_mock.get(CUSTOMERS_URL, json=a_page())
    client = make_client(clock, max_requests_per_second=10)
    start = clock()

    for _ in range(21):
        client.get("/v1/customers")

    assert clock() - start >= 2.0 - 1e-5  # float slack at epoch magnitudes
    assert clock() - start < 2.2  # and no slower than the budget needs


def test_given_many_threads_then_each_gets_its_own_slot() -> None:
    frozen = FakeClock()
    waits: list[float] = []
    lock = threading.Lock()
    bucket = TokenBucket(rate=50.0, clock=frozen, sleep=lambda _s: None)

    def take() -> None:
        waited = bucket.acquire()
        with lock:
            waits.append(waited)

    threads = [threading.Thread(target=take) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Five at once (a tenth of a second's worth), then one every 1/50 s.
    assert sorted(waits) == pytest.approx([0.0] * 4 + [i / 50.0 for i in range(36)])


def sends(bucket: TokenBucket, clock: FakeClock, arrivals: list[float]) -> list[float]:
    """When each request goes, for requests asking at these times one after another (the bucket's
    sleeps move the clock; a request asks when it arrives or when the one before went, if later)."""
    sent = []
    for arrival in arrivals:
        clock.now = max(clock.now, arrival)
        bucket.acquire()
        sent.append(clock.now)
    return sent


def test_given_slots_left_unused_while_answers_come_then_they_are_taken_later_within_the_budget() -> None:
    """The first round trip: 9 requests at once, then none until their answers come 0.2 s later. The
    slots of that wait are taken then, so the first second sends 90, as the budget allows (evenly
    spaced from the first request: 82), and no second ever holds more."""
    clock = FakeClock(start=0.0)
    bucket = TokenBucket(rate=90.0, clock=clock, sleep=clock.sleep)

    slots = sends(bucket, clock, [0.0] * 9 + [0.2] * 300)

    assert sum(1 for slot in slots if slot < 1.0) == 90
    assert all(later - earlier >= 1.0 - 1e-9 for earlier, later in zip(slots, slots[90:], strict=False))


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([100.0, 90.0, 22.5, 10.0, 2.5]),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=300),
)
def test_given_any_arrivals_then_no_second_holds_more_requests_than_the_budget(
    rate: float, gaps: list[float]
) -> None:
    clock = FakeClock(start=0.0)
    bucket = TokenBucket(rate=rate, clock=clock, sleep=clock.sleep)
    arrivals = [sum(gaps[: i + 1]) for i in range(len(gaps))]

    slots = sends(bucket, clock, arrivals)

    most = math.ceil(rate)  # in any one second [t, t + 1)
    assert all(later - earlier >= 1.0 - 1e-9 for earlier, later in zip(slots, slots[most:], strict=False))
    assert all(slot >= arrival for slot, arrival in zip(slots, arrivals, strict=True))


def test_given_a_caller_that_wakes_late_then_it_does_not_send_into_a_second_already_full() -> None:
    """A loaded machine wakes a caller well after its slot: sending then would add it to the second
    of later slots, one more than the budget there. It waits until that second has room."""
    clock = FakeClock(start=0.0)
    woke_late: list[float] = []

    def sleep(seconds: float) -> None:
        if not woke_late and clock.now >= 0.4:
            woke_late.append(clock.now)
            seconds += 0.6
        clock.sleep(seconds)

    bucket = TokenBucket(rate=90.0, clock=clock, sleep=sleep)

    sent = sends(bucket, clock, [0.0] * 400)

    assert woke_late
    assert all(later - earlier >= 1.0 - 1e-9 for earlier, later in zip(sent, sent[90:], strict=False))


def test_given_a_pause_after_a_429_then_the_requests_after_it_are_evenly_spaced() -> None:
    clock = FakeClock(start=0.0)
    bucket = TokenBucket(rate=90.0, clock=clock, sleep=clock.sleep)
    bucket.pause_until(5.0)

    slots = sends(bucket, clock, [1.0, 1.0, 1.0])

    assert slots == pytest.approx([5.0, 5.0 + 1 / 90, 5.0 + 2 / 90])


def test_given_threads_sharing_a_client_then_counts_add_up(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, json=a_page())
    client = make_client()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                client.get("/v1/customers")
        except BaseException as exc:  # noqa: BLE001 - surface to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert client.stats.snapshot()["requests"] == 200
    assert client.stats.snapshot()["by_status"] == {200: 200}


# -------------------------------------------------------------------------------- server clock


def test_server_now_is_the_latest_date_header(requests_mock: rm.Mocker) -> None:
    clock = FakeClock(start=1_000.0)
    requests_mock.get(
        CUSTOMERS_URL,
        [
            {"json": a_page(), "headers": {"Date": http_date(1_793_491_200)}},
            {"json": a_page(), "headers": {"Date": http_date(1_793_491_260)}},
        ],
    )
    client = make_client(clock)

    assert client.server_now() == 1000  # no response yet: the injected clock
    client.get("/v1/customers")
    assert client.server_now() == 1_793_491_200
    client.get("/v1/customers")
    assert client.server_now() == 1_793_491_260


def test_given_responses_finishing_out_of_order_then_server_now_never_goes_back(
    requests_mock: rm.Mocker,
) -> None:
    requests_mock.get(
        CUSTOMERS_URL,
        [
            {"json": a_page(), "headers": {"Date": http_date(1_793_491_260)}},
            {"json": a_page(), "headers": {"Date": http_date(1_793_491_200)}},
        ],
    )
    client = make_client()
    client.get("/v1/customers")
    client.get("/v1/customers")

    assert client.server_now() == 1_793_491_260


def test_given_unparseable_date_header_then_previous_server_time_is_kept(requests_mock: rm.Mocker) -> None:
    requests_mock.get(
        CUSTOMERS_URL,
        [
            {"json": a_page(), "headers": {"Date": http_date(1_793_491_200)}},
            {"json": a_page(), "headers": {"Date": "soon"}},
        ],
    )
    client = make_client()
    client.get("/v1/customers")
    client.get("/v1/customers")

    assert client.server_now() == 1_793_491_200


# ------------------------------------------------------------------------------------- secrets


def _run_failures(client: StripeClient, requests_mock: rm.Mocker, key: str) -> list[str]:
    """Drives the client through every error path; returns the texts a user or log could see."""
    echo = ErrorResponseBuilder(400, f"Invalid value for api_key: {key}")
    scenarios: list[tuple[dict, type[StripeError]]] = [
        (invalid_api_key_error(key).as_requests_mock(), StripeAuthError),
        (expired_api_key_error(key).as_requests_mock(), StripeAuthError),
        (permission_error("rak_charge_read", key=key).as_requests_mock(), StripePermissionError),
        (echo.as_requests_mock(), StripeRequestError),
        (server_error(500).as_requests_mock(), StripeTransientError),
    ]
    seen: list[str] = [repr(client), repr(client.stats)]
    for response, expected in scenarios:
        requests_mock.get(CUSTOMERS_URL, **response)
        with pytest.raises(expected) as caught:
            client.get("/v1/customers")
        seen += [str(caught.value), repr(caught.value), *map(str, caught.value.args)]
    return seen


@pytest.mark.parametrize("key", [TEST_SECRET_KEY, LIVE_SECRET_KEY, TEST_RESTRICTED_KEY])
def test_key_never_appears_in_errors_reprs_or_logs(
    requests_mock: rm.Mocker, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(key=key, max_retries=2)

    seen = _run_failures(client, requests_mock, key)

    secret_part = key[8:]
    for text in [*seen, caplog.text]:
        assert key not in text
        assert secret_part[:-4] not in text


def test_retries_are_logged_without_the_key(
    requests_mock: rm.Mocker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    requests_mock.get(CUSTOMERS_URL, [server_error(502).as_requests_mock(), {"json": a_page()}])

    make_client().get("/v1/customers")

    assert "Retrying GET /v1/customers" in caplog.text
    assert TEST_SECRET_KEY not in caplog.text


def test_given_malformed_key_then_client_refuses_to_start_without_echoing_it() -> None:
    with pytest.raises(StripeAuthError) as caught:
        StripeClient("pk_live_abcdefghijklmnop1234")

    assert "publishable" in str(caught.value)
    assert "abcdefghijklmnop1234" not in str(caught.value)


# --------------------------------------------------------------------------------- key helpers


def test_mask_key_keeps_kind_mode_and_last_four() -> None:
    assert mask_key("sk_test_0123456789abcdefghabcd") == "sk_test_…abcd"
    assert mask_key("rk_live_51Habcdefghijklmnopqrstu") == "rk_live_…rstu"
    assert mask_key("sk_test_short") == "sk_test_…"
    assert mask_key("") == "<no key>"


def test_client_reports_key_kind_and_mode() -> None:
    live_restricted = StripeClient("rk_live_0123456789abcdefghij")
    test_secret = StripeClient(TEST_SECRET_KEY)

    assert (live_restricted.mode, live_restricted.key_kind) == ("live", "restricted")
    assert (test_secret.mode, test_secret.key_kind) == ("test", "secret")


def test_surrounding_whitespace_from_a_paste_is_ignored(requests_mock: rm.Mocker) -> None:
    requests_mock.get(CUSTOMERS_URL, json=a_page())

    make_client(key=f"  {TEST_SECRET_KEY}\n").get("/v1/customers")

    assert requests_mock.last_request.headers["Authorization"] == f"Bearer {TEST_SECRET_KEY}"


def test_given_a_base_url_without_scheme_then_fails_at_once_instead_of_retrying() -> None:
    clock = FakeClock()
    client = StripeClient(TEST_SECRET_KEY, base_url="api.stripe.com", clock=clock, sleep=clock.sleep)

    with pytest.raises(StripeRequestError, match="Invalid Stripe URL"):
        client.get("/v1/customers")

    assert clock.sleeps == []
