"""HTTP/1.1 keep-alive server: auth, rate limit, latency and faults in front of the Api."""

from __future__ import annotations

import base64
import socket
import struct
import sys
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from .api import Api, ApiError, parse_params
from .control import mask_key, mask_restricted
from .model import API_VERSION

if TYPE_CHECKING:
    from .emulator import Emulator

NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization header, using "
    "Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/."
)
RATE_LIMITED = (
    "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."
)
LOCK_TIMEOUT = (
    "This object cannot be accessed right now because another API request or Stripe process is currently "
    "accessing it. If you see this error intermittently, retry the request. If you see this error frequently "
    "and are making multiple concurrent requests to a single object, make your requests serially or at a "
    "lower rate. See https://stripe.com/docs/rate-limits for more details."
)


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, emulator: Emulator, port: int) -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up on a keep-alive connection is normal (and the reset fault does it on
        # purpose); anything else is a real bug worth the traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small JSON responses otherwise wait ~40 ms for delayed ACKs (Nagle + keep-alive).
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer
    entry: dict[str, Any] | None = None  # this request's log entry until it is recorded

    def version_string(self) -> str:
        return "nginx"

    def log_message(self, format: str, *args: Any) -> None:  # quiet; the request log is the record
        return

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(self.server.emulator.now, usegmt=True)  # the simulated clock

    def do_GET(self) -> None:
        self.handle_any("GET")

    def do_POST(self) -> None:
        self.handle_any("POST")

    def do_DELETE(self) -> None:
        self.handle_any("DELETE")

    # ---- plumbing --------------------------------------------------------------------------------
    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        truncate: bool = False,
        content_type: str = "application/json",
    ) -> None:
        self.record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Request-Id", self.request_id)
        self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or API_VERSION)
        self.send_header("Cache-Control", "no-cache, no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if truncate:
            self.close_connection = True
            body = body[: len(body) // 2]
        # Headers and body leave in one write.
        buffer: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]
        buffer.append(b"\r\n")
        buffer.append(body)
        self.flush_headers()

    def record(self, status: int) -> None:
        """Log the request before its answer leaves, so a client that has its answer finds it logged
        (and the log is in the order the answers were given)."""
        entry, self.entry = self.entry, None
        if entry is not None:
            entry["status"] = status
            entry["finished"] = time.monotonic()
            self.server.emulator.request_log.append(entry)

    def reset(self) -> None:
        """Abort the connection with a TCP reset, no response."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def api_key(self) -> str | None:
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip() or None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip()).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            return decoded.partition(":")[0] or None
        return None

    # ---- one request -----------------------------------------------------------------------------
    def handle_any(self, method: str) -> None:
        emulator = self.server.emulator
        self.entry = None
        self.request_id = "req_" + uuid.uuid4().hex[:14]
        split = urlsplit(self.path)
        path = split.path
        body = self.read_body() if method != "GET" else b""
        if path.startswith("/_emulator/"):
            status, payload = emulator.admin(method, path, split.query, body)
            self.reply(status, payload)
            return
        entry: dict[str, Any] = {
            "method": method,
            "path": path,
            "query": split.query,
            "stripe_version": self.headers.get("Stripe-Version"),
            "time": emulator.now,  # simulated
            "started": time.monotonic(),  # real: when the server began and finished serving it
        }
        self.entry = entry
        status = self.serve_stripe(emulator, method, path, split.query, entry)
        self.record(status)  # a reset connection has no answer to log it

    def serve_stripe(
        self, emulator: Emulator, method: str, path: str, query: str, entry: dict[str, Any]
    ) -> int:
        settings = emulator.settings
        delay = settings.latency_ms + (emulator.jitter() if settings.jitter_ms else 0.0)
        if delay > 0:
            time.sleep(delay / 1000)  # outside any lock: slow requests never block others
        key = self.api_key()
        if key is None:
            self.reply(401, ApiError(401, NO_KEY).body(), {"Www-Authenticate": 'Basic realm="Stripe"'})
            return 401
        info = emulator.keys.get(key)
        entry["key"] = mask_key(key)
        if info is None:
            body = ApiError(401, f"Invalid API Key provided: {mask_key(key)}").body()
            self.reply(401, body, {"Www-Authenticate": 'Basic realm="Stripe"'})
            return 401
        entry["livemode"] = info.livemode
        bucket = emulator.bucket(info.livemode)
        if bucket is not None and not bucket.take():
            headers = {
                "Stripe-Should-Retry": "true",
                "Stripe-Rate-Limited-Reason": "global-rate",
                "Retry-After": "1",  # ours: Stripe does not document Retry-After
            }
            self.reply(429, ApiError(429, RATE_LIMITED, code="rate_limit").body(), headers)
            return 429
        fault = emulator.faults.pick()
        entry["fault"] = fault
        if fault == "reset":
            self.reset()
            return 0
        if fault == "slow":
            time.sleep(emulator.faults.slow_ms / 1000)
        elif fault == "lock_timeout":
            body = ApiError(429, LOCK_TIMEOUT, code="lock_timeout").body()
            self.reply(429, body, {"Stripe-Should-Retry": "true"})
            return 429
        elif fault in ("500", "503"):
            error = {"error": {"message": "An unknown error occurred", "type": "api_error"}}
            self.reply(int(fault), orjson.dumps(error), {"Stripe-Should-Retry": "true"})
            return int(fault)
        elif fault == "502":
            self.reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
            return 502
        if method != "GET":
            refusal = ApiError(400, f"This emulator is read-only: {method} {path} is not supported.")
            self.reply(400, refusal.body())
            return 400
        label = mask_restricted(key) if key.startswith("rk_") else mask_key(key)
        params = parse_params(parse_qsl(query, keep_blank_values=True))
        try:
            with emulator.lock:
                payload = emulator.api.get(path, params, info.permissions, label)
        except ApiError as error:
            self.reply(error.status, error.body())
            return error.status
        if info.livemode:
            payload = payload.replace(b'"livemode":false', b'"livemode":true')
        self.reply(200, payload, truncate=fault == "truncate")
        return 200


def serve_in_thread(emulator: Emulator, port: int) -> tuple[EmulatorHTTPServer, threading.Thread]:
    server = EmulatorHTTPServer(emulator, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    return server, thread


__all__ = ["Api", "EmulatorHTTPServer", "serve_in_thread"]
