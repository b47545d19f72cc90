"""The console script as deployed: `perly-webhooks` (uvicorn) on 127.0.0.1, real HTTP deliveries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from destination_perly.config import open_store, parse_config
from integration_tests.demo import start_receiver, stop_receiver
from unit_tests.webhooks.builders import (
    OLD_SECRET,
    SECRET,
    T0,
    customer,
    delivery,
    event,
    failed_charge,
    subscription,
)

pytestmark = pytest.mark.emulator


@dataclass
class Server:
    url: str
    config: dict
    process: subprocess.Popen[str]

    def store(self):  # type: ignore[no-untyped-def]
        return open_store(parse_config(self.config).store)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    config = {
        "store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")},
        "as_of": "2026-11-01T00:00:00Z",
    }
    config_path = tmp_path / "destination_config.json"
    config_path.write_text(json.dumps(config))
    log_path = tmp_path / "server.log"
    process, url = start_receiver(config_path, log_path, f"{SECRET},{OLD_SECRET}", timeout_s=30)
    try:
        yield Server(url, config, process)
    finally:
        stop_receiver(process)
    # Secrets never reach the logs, whatever happened.
    logged = log_path.read_text()
    assert SECRET not in logged
    assert OLD_SECRET not in logged


def wait_applied(server: Server, expected: int) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = httpx.get(f"{server.url}/healthz").json()
        if stats["applied"] >= expected and stats["in_progress"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"not applied in time: {stats}")


def test_given_the_running_service_when_stripe_delivers_a_failed_payment_then_health_is_updated(
    server: Server,
) -> None:
    day = 86400
    events = [
        event("customer.created", customer("cus_live"), T0 - 30 * day),
        event("customer.subscription.created", subscription("sub_live", "cus_live"), T0 - 20 * day),
        event("charge.failed", failed_charge("ch_live_1", "cus_live", created=T0 - day), T0 - day),
        event("charge.failed", failed_charge("ch_live_2", "cus_live", created=T0), T0),
    ]
    with httpx.Client(base_url=server.url) as client:
        for each in events:
            response = client.post("/webhooks/stripe", **delivery(each))
            assert response.status_code == 200, response.text
        rejected = client.post("/webhooks/stripe", **delivery(events[0], secret="whsec_not_ours"))
        assert rejected.status_code == 400
        retried = client.post("/webhooks/stripe", **delivery(events[-1], secret=OLD_SECRET))
        assert retried.json()["status"] == "duplicate"
    stats = wait_applied(server, len(events))
    assert stats["accepted"] == len(events)
    assert stats["duplicate"] == 1
    store = server.store()
    [health] = store.query("SELECT * FROM perly_customer_health WHERE customer_id = 'cus_live'")
    store.close()
    assert health["flag_payment_failures"] == 1
    assert health["mrr"] == 5000
    assert health["as_of"] == "2026-11-01T00:00:00Z"  # emulated time: the newest event's time


def test_given_no_secret_configured_when_started_then_it_refuses_with_a_clear_message(tmp_path: Path) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"store": {"store_type": "sqlite", "path": str(tmp_path / "p.db")}}))
    env = {k: v for k, v in os.environ.items() if k != "PERLY_WEBHOOK_SECRETS"}
    result = subprocess.run(
        [sys.executable, "-m", "destination_perly.webhooks", "--config", str(config_path), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "PERLY_WEBHOOK_SECRETS" in result.stderr
