"""The receiver under faults: a PostgreSQL restart, slow clients holding connections (slow-loris)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

with warnings.catch_warnings():
    # starlette 1.x suggests httpx2 for its TestClient; the installed httpx works the same.
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

from destination_perly.webhooks import DEFAULT_PATH, create_app, settings_from_config
from integration_tests.postgres import store_settings
from integration_tests.postgres_server import free_port, postgres_server
from unit_tests.webhooks.builders import SECRET, T0, customer, delivery, event


@pytest.mark.slow
def test_given_postgres_restarts_then_the_receiver_reconnects_and_healthz_tells_the_outage() -> None:
    with postgres_server() as server:
        config = {"store": store_settings(server.dsn, "perly_webhooks")}
        clock = lambda: datetime.fromtimestamp(T0, UTC)  # noqa: E731
        settings = settings_from_config(config, [SECRET], clock=clock)
        settings.store_wait_seconds = 5
        with TestClient(create_app(settings)) as client:

            def post(customer_id: str) -> int:
                return client.post(
                    DEFAULT_PATH, **delivery(event("customer.created", customer(customer_id), T0))
                ).status_code

            assert post("cus_before") == 200
            assert settings.processor.wait_idle(20)

            server.stop()
            assert post("cus_during") == 503  # Stripe retries it later
            down = client.get("/healthz")
            assert (down.status_code, down.json()["store"]) == (503, "unavailable")

            server.start()
            assert client.get("/healthz").json()["store"] == "ok"
            assert post("cus_after") == 200
            assert post("cus_during") == 200  # Stripe's retry
            assert settings.processor.wait_idle(20)
            stats = client.get("/healthz").json()
            assert (stats["accepted"], stats["applied"]) == (3, 3)


HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[str]:
    """`perly-webhooks` as deployed, with short slow-client timeouts."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}}))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "destination_perly.webhooks", "--config", str(config), "--port", str(port)]
        + [
            "--header-timeout",
            str(HEADER_TIMEOUT),
            "--body-timeout",
            str(BODY_TIMEOUT),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "PERLY_WEBHOOK_SECRETS": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the receiver did not start"
            assert process.poll() is None, "the receiver exited at start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def closed_by_server(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


@pytest.mark.slow
def test_given_slow_loris_clients_then_their_connections_are_closed_and_stripe_still_gets_through(
    receiver: str,
) -> None:
    port = int(receiver.rsplit(":", 1)[1])
    trickling = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"POST {DEFAULT_PATH} HTTP/1.1\r\nHost: perly\r\n".encode())
        trickling.append(sock)
    slow_body = socket.create_connection(("127.0.0.1", port))
    slow_body.sendall(
        f"POST {DEFAULT_PATH} HTTP/1.1\r\nHost: perly\r\nContent-Length: 1000\r\n\r\n{{".encode()
    )

    # A real delivery is served while they hold their connections.
    response = httpx.post(receiver + DEFAULT_PATH, **delivery(event("customer.created", customer(), T0)))
    assert response.status_code == 200

    open_ones = list(trickling)
    deadline = time.monotonic() + HEADER_TIMEOUT + 5
    while open_ones and time.monotonic() < deadline:
        for sock in list(open_ones):
            try:
                sock.sendall(b"X-Trickle: 1\r\n")  # a header line now and then: never a complete head
            except OSError:
                open_ones.remove(sock)
                continue
            if closed_by_server(sock):
                open_ones.remove(sock)
        time.sleep(0.2)
    assert open_ones == []

    slow_body.settimeout(BODY_TIMEOUT + 5)
    answer = slow_body.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    for sock in [*trickling, slow_body]:
        sock.close()
