"""Signed webhook delivery from a background thread, Stripe's signature scheme, a few retries."""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
import time
from typing import Any

import requests


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookSender:
    """Posts each queued event body, in order; retries non-2xx answers and connection errors."""

    def __init__(self, url: str, secret: str, retries: int = 3, backoff_s: float = 0.2) -> None:
        self.url = url
        self.secret = secret
        self.retries = retries
        self.backoff_s = backoff_s
        self.queue: queue.Queue[bytes | None] = queue.Queue()
        self.log: list[dict[str, Any]] = []  # one entry per attempt: event id, status, attempt
        self.session = requests.Session()
        self.thread = threading.Thread(target=self._run, name="emulator-webhooks", daemon=True)
        self.thread.start()

    def send(self, body: bytes) -> None:
        self.queue.put(body)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued event has been delivered or given up on."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.queue.unfinished_tasks

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5)
        self.session.close()

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            try:
                if body is None:
                    return
                self._deliver(body)
            finally:
                self.queue.task_done()

    def _deliver(self, body: bytes) -> None:
        event_id = body[7 : body.index(b'"', 7)].decode() if body.startswith(b'{"id":"') else "?"
        for attempt in range(1, self.retries + 2):
            # Signed with wall-clock time: receivers check it against their own clock (300 s tolerance).
            header = signature_header(self.secret, body, int(time.time()))
            try:
                response = self.session.post(
                    self.url,
                    data=body,
                    headers={"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header},
                    timeout=10,
                )
                status: int | str = response.status_code
            except requests.RequestException as error:
                status = type(error).__name__
            self.log.append({"event": event_id, "status": status, "attempt": attempt})
            if isinstance(status, int) and 200 <= status < 300:
                return
            time.sleep(self.backoff_s * attempt)
