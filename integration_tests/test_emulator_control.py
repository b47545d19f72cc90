"""Faults, latency, the admin interface, signed webhooks and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from integration_tests.stripe_emulator import Emulator

pytestmark = pytest.mark.emulator

TEST_KEY = "sk_test_perly_demo"
ROOT = Path(__file__).resolve().parents[1]


def client(emu: Emulator, key: str = TEST_KEY, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": emu.url}, max_network_retries=retries)


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("500", stripe.APIError, 500),
        ("502", stripe.APIError, 502),
        ("503", stripe.APIError, 503),
        ("lock_timeout", stripe.RateLimitError, 429),
        ("reset", stripe.APIConnectionError, None),
        ("truncate", stripe.APIConnectionError, None),
    ],
)
def test_given_a_fault_kind_at_full_rate_then_the_client_sees_that_failure(
    emulator_factory: Any, kind: str, error: type[Exception], status: int | None
) -> None:
    emu = emulator_factory(customers=20, faults={kind: 1.0})
    with pytest.raises(error) as caught:
        client(emu).v1.customers.list()
    if status is not None:
        assert getattr(caught.value, "http_status", None) == status
    if kind == "lock_timeout":
        assert caught.value.error.code == "lock_timeout"  # type: ignore[attr-defined]


def test_given_retryable_faults_when_the_client_retries_then_it_gets_through(emulator_factory: Any) -> None:
    emu = emulator_factory(customers=20, faults={"503": 0.5}, fault_seed=1)
    listed = [c.id for c in client(emu, retries=8).v1.customers.list({"limit": 100}).auto_paging_iter()]
    assert listed == [c["id"] for c in emu.objects("customers")]
    statuses = [entry["status"] for entry in emu.request_log]
    assert 503 in statuses
    assert statuses[-1] == 200


def test_given_the_same_fault_seed_then_the_same_fault_sequence(emulator_factory: Any) -> None:
    def statuses(seed: int) -> list[int]:
        emu = emulator_factory(customers=10, faults="500:0.3,lock_timeout:0.2", fault_seed=seed)
        for _ in range(30):
            requests.get(emu.url + "/v1/customers", auth=(TEST_KEY, ""), timeout=10)
        return [entry["status"] for entry in emu.request_log]

    first, second, other = statuses(5), statuses(5), statuses(6)
    assert first == second
    assert first != other
    assert {200, 500, 429} <= set(first)


def most_in_flight(entries: list[dict[str, Any]]) -> int:
    """The largest number of requests the server was serving at one moment (its own timestamps)."""
    edges = sorted([(e["started"], 1) for e in entries] + [(e["finished"], -1) for e in entries])
    in_flight = most = 0
    for _moment, step in edges:  # at a tie the finish (-1) sorts first: touching is not overlapping
        in_flight += step
        most = max(most, in_flight)
    return most


def test_given_latency_then_each_request_waits_but_others_are_not_blocked(emulator_factory: Any) -> None:
    emu = emulator_factory(customers=10, latency_ms=500)
    ready = threading.Barrier(4)
    answers: list[int] = []

    def one() -> None:
        ready.wait(timeout=10)
        answers.append(requests.get(emu.url + "/v1/customers", auth=(TEST_KEY, ""), timeout=30).status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 4
    served = list(emu.request_log)
    assert len(served) == 4
    assert all(e["finished"] - e["started"] >= 0.5 for e in served)
    # Served one after another (a sleep holding a lock), no two would ever overlap; however slow the
    # machine, requests that all wait 0.5 s after arriving together overlap.
    assert most_in_flight(served) >= 2


def test_given_admin_endpoints_then_keys_faults_and_clock_change(emulator_factory: Any) -> None:
    emu = emulator_factory(customers=30)
    admin = emu.url + "/_emulator"
    state = requests.get(admin + "/state", timeout=10).json()
    assert state["now"] == emu.now
    assert state["counts"]["customers"] == len(emu.objects("customers"))
    assert "sk_test_perly_demo" not in json.dumps(state)  # keys are not echoed in full

    added = requests.post(
        admin + "/keys",
        json={"key": "rk_test_only_customers", "permissions": ["rak_customer_read"]},
        timeout=10,
    )
    assert added.status_code == 200
    limited = client(emu, "rk_test_only_customers")
    assert limited.v1.customers.list().data
    with pytest.raises(stripe.PermissionError):
        limited.v1.invoices.list()

    requests.post(admin + "/faults", json={"faults": {"500": 1.0}}, timeout=10).raise_for_status()
    with pytest.raises(stripe.APIError):
        client(emu).v1.customers.list()
    requests.post(admin + "/faults", json={"faults": {}}, timeout=10).raise_for_status()
    assert client(emu).v1.customers.list().data

    before = emu.now
    advanced = requests.post(admin + "/advance", params={"days": 2}, timeout=60).json()
    assert advanced["to"] == before + 2 * 86_400 == emu.now
    date = requests.get(emu.url + "/v1/customers", auth=(TEST_KEY, ""), timeout=10).headers["Date"]
    assert date == "Tue, 03 Nov 2026 00:00:00 GMT"

    bad = requests.post(admin + "/faults", json={"faults": {"meteor": 0.1}}, timeout=10)
    assert bad.status_code == 400


class Receiver:
    """A webhook endpoint that fails its first `fail_first` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[tuple[bytes, str]] = []
        self.fail_first = fail_first
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                status = 500 if receiver.calls <= receiver.fail_first else 200
                if status == 200:
                    receiver.bodies.append((body, self.headers["Stripe-Signature"]))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_given_webhooks_when_advancing_then_every_event_arrives_signed_and_verifiable(
    emulator_factory: Any,
) -> None:
    receiver = Receiver(fail_first=2)
    secret = "whsec_test_perly_emulator"
    try:
        emu = emulator_factory(customers=80, webhook_url=receiver.url, webhook_secret=secret)
        summary = emu.advance(days=3)
        assert emu.webhooks is not None
        assert emu.webhooks.wait_idle(30)
        delivered = [stripe.Webhook.construct_event(body, header, secret) for body, header in receiver.bodies]
        assert [event.id for event in delivered] == summary["event_ids"]  # all, in order, despite failures
        assert receiver.calls == len(summary["event_ids"]) + 2
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(receiver.bodies[0][0], receiver.bodies[0][1], "whsec_wrong")
    finally:
        receiver.close()


def test_given_the_admin_webhooks_endpoint_then_delivery_starts(emulator_factory: Any) -> None:
    receiver = Receiver()
    try:
        emu = emulator_factory(customers=40)
        requests.post(
            emu.url + "/_emulator/webhooks", json={"url": receiver.url, "secret": "whsec_abc"}, timeout=10
        ).raise_for_status()
        summary = emu.advance(days=2)
        assert emu.webhooks is not None
        assert emu.webhooks.wait_idle(30)
        assert len(receiver.bodies) == len(summary["event_ids"]) > 0
    finally:
        receiver.close()


def test_given_the_cli_then_first_line_is_json_with_the_url_and_it_serves(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "integration_tests.stripe_emulator",
            "--port",
            "0",
            "--customers",
            "25",
            "--seed",
            "9",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["url"].startswith("http://127.0.0.1:")
        page = requests.get(
            first["url"] + "/v1/customers", params={"limit": 100}, auth=(TEST_KEY, ""), timeout=10
        )
        refused = requests.get(first["url"] + "/v1/customers", auth=("sk_test_notakey1234", ""), timeout=10)
        assert len(page.json()["data"]) == 25
        assert refused.status_code == 401
        assert "perly_demo" not in json.dumps(first)  # keys are named masked, never printed whole
        assert "sk_test_************demo" in first["keys"]
    finally:
        process.terminate()
        rest, errors = process.communicate(timeout=15)
    assert process.returncode == 0
    assert "perly_demo" not in rest + errors  # nor in anything else it prints
    assert "notakey" not in rest + errors + refused.text


def test_given_slow_fault_then_the_answer_is_late_but_complete(emulator_factory: Any) -> None:
    emu = emulator_factory(customers=10, faults={"slow": 1.0}, slow_ms=400)
    listed = client(emu).v1.customers.list({"limit": 100})
    assert [c.id for c in listed.data] == [c["id"] for c in emu.objects("customers")]
    (served,) = list(emu.request_log)
    assert served["fault"] == "slow"
    assert served["status"] == 200
    assert served["finished"] - served["started"] >= 0.4  # a lower bound: load can only add to it
