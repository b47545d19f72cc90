"""The client over real HTTP against the local Stripe emulator: headers on the wire, faults, rate limits."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from integration_tests.stripe_emulator import Emulator
from source_perly_stripe.client import (
    API_VERSION,
    ReadOnlyViolation,
    StripeAuthError,
    StripeClient,
    StripePermissionError,
)

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(customers=40, seed=11) as running:
        yield running


def test_given_demo_key_when_paging_customers_then_every_request_is_a_pinned_get(emulator: Emulator) -> None:
    client = StripeClient("sk_test_perly_demo", base_url=emulator.url, max_requests_per_second=1000)
    before = len(emulator.request_log)

    ids: list[str] = []
    params: list[tuple[str, str | int]] = [("limit", 10)]
    while True:
        page = client.get("/v1/customers", params)
        ids += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            break
        params = [("limit", 10), ("starting_after", ids[-1])]

    sent = emulator.request_log[before:]
    assert sorted(ids) == sorted(c["id"] for c in emulator.objects("customers"))
    assert {entry["method"] for entry in sent} == {"GET"}
    assert {entry["stripe_version"] for entry in sent} == {API_VERSION}
    assert client.server_now() == emulator.now  # the emulator's Date header is its simulated clock


def test_given_a_write_attempt_then_nothing_reaches_the_emulator(emulator: Emulator) -> None:
    client = StripeClient("sk_test_perly_demo", base_url=emulator.url)
    before = len(emulator.request_log)

    for method in ("post", "delete", "put", "patch"):
        with pytest.raises(ReadOnlyViolation):
            getattr(client.session, method)(f"{emulator.url}/v1/customers", data={"email": "x@example.com"})

    assert len(emulator.request_log) == before


def test_given_unknown_key_then_invalid_or_revoked(emulator: Emulator) -> None:
    client = StripeClient("sk_test_unknownKey0123456789", base_url=emulator.url)

    with pytest.raises(StripeAuthError, match="revoked"):
        client.get("/v1/customers")


def test_given_billing_restricted_key_when_reading_events_then_permission_slug_is_named(
    emulator: Emulator,
) -> None:
    client = StripeClient("rk_test_perly_billing", base_url=emulator.url)

    with pytest.raises(StripePermissionError) as caught:
        client.get("/v1/events", [("limit", 1)])

    assert caught.value.permission == "rak_event_read"


def test_given_faulty_emulator_then_every_request_eventually_succeeds() -> None:
    # Every fault kind, 30% of requests in all (the emulator's fault sequence is seeded: deterministic).
    faults = {"500": 0.05, "502": 0.05, "503": 0.05, "lock_timeout": 0.05, "reset": 0.05, "truncate": 0.05}
    with Emulator(customers=20, seed=3, faults=faults, fault_seed=7) as faulty:
        # Sleeps are skipped: the retries still happen, they just do not wait.
        client = StripeClient(
            "sk_test_perly_demo", base_url=faulty.url, max_requests_per_second=1000, sleep=lambda _s: None
        )
        pages = [client.get("/v1/customers", [("limit", 5)]) for _ in range(40)]

    stats = client.stats.snapshot()
    assert all(page["object"] == "list" for page in pages)
    assert stats["retries"] > 0
    assert stats["by_status"][200] >= 40
    assert {"network", 429, 500, 502, 503} <= set(stats["by_status"])  # every kind was met and survived


def test_given_budget_above_the_servers_limit_then_429s_are_waited_out_and_nothing_fails() -> None:
    # The emulator allows 10 requests/s for test keys; the client is told it may send 100/s.
    with Emulator(customers=10, seed=4, rate_limit=(100, 10)) as limited:
        client = StripeClient("sk_test_perly_demo", base_url=limited.url, max_requests_per_second=100)
        started = time.monotonic()
        for _ in range(25):
            client.get("/v1/customers", [("limit", 1)])
        elapsed = time.monotonic() - started

    stats = client.stats.snapshot()
    assert stats["by_status"][200] == 25
    assert stats["by_status"].get(429, 0) > 0  # the server did push back...
    assert elapsed >= 1.0  # ...and the client honoured its Retry-After instead of hammering it
