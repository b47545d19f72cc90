"""The Python face of the emulator: `Emulator(...).start()`, `.url`, `.advance()`, `.objects()`..."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

from .api import Api
from .book import DEFAULT_NOW, RESOURCES, Book
from .control import FAULT_KINDS, Faults, KeyInfo, TokenBucket, default_keys, key_info, parse_faults
from .model import CACHE_LIMIT
from .request_log import DEFAULT_KEEP, RequestLog
from .server import EmulatorHTTPServer, serve_in_thread
from .webhooks import WebhookSender

DEFAULT_RATE_LIMIT = (100.0, 25.0)  # requests per second: live, test (Stripe's documented defaults)


def parse_now(now: int | str | datetime | None) -> int:
    if now is None:
        return DEFAULT_NOW
    if isinstance(now, int):
        return now
    if isinstance(now, str):
        now = datetime.fromisoformat(now.replace("Z", "+00:00"))
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return int(now.timestamp())


@dataclass
class Settings:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_limit: tuple[float, float] | None = None  # (live, test) per second; None: no limit


class Emulator:
    """A local Stripe: a seeded book of business served over HTTP on 127.0.0.1."""

    def __init__(
        self,
        customers: int = 2000,
        seed: int = 42,
        now: int | str | datetime | None = None,
        *,
        port: int = 0,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        rate_limit: bool | tuple[float, float] | None = None,
        faults: str | dict[str, float] | None = None,
        fault_seed: int | None = None,
        slow_ms: int = 2000,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        request_log_size: int = DEFAULT_KEEP,
    ) -> None:
        self.port = port
        self.lock = threading.RLock()
        self.book = Book(customers=customers, seed=seed, now=parse_now(now))
        self.api = Api(self.book)
        self.keys: dict[str, KeyInfo] = default_keys()
        self.settings = Settings()
        self.buckets: dict[bool, TokenBucket] = {}
        self.faults = Faults({})
        self._jitter_rng = random.Random(seed)
        self.configure_load(latency_ms=latency_ms, jitter_ms=jitter_ms, rate_limit=rate_limit)
        self.set_faults(faults, seed=seed if fault_seed is None else fault_seed, slow_ms=slow_ms)
        self.request_log = RequestLog(request_log_size)  # bounded: counts all, keeps the newest
        self.webhooks: WebhookSender | None = None
        if webhook_url:
            self.configure_webhooks(webhook_url, webhook_secret or "")
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Emulator:
        if self._server is None:
            self._server, self._thread = serve_in_thread(self, self.port)
            self.port = self._server.server_address[1]
            self._stopping.clear()
            threading.Thread(target=self._warm_cache, name="emulator-warm-up", daemon=True).start()
        return self

    def _warm_cache(self) -> None:
        """Render objects to JSON in the background, newest first, so a client's first pass over the
        book is served from cached bytes. Small chunks under the lock keep requests flowing."""
        budget = CACHE_LIMIT
        for resource in ("invoices", "charges", "subscriptions", "customers", "prices", "plans", "coupons"):
            objects = self.book.stores[resource].sorted()
            index = len(objects)
            while index > 0 and budget > 0:
                if self._stopping.is_set():
                    return
                with self.lock:
                    chunk = objects[max(0, index - 200) : index]
                    for obj in chunk:
                        obj.json_bytes(self.book)
                index -= len(chunk)
                budget -= len(chunk)
                time.sleep(0)  # let request threads in between chunks

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.webhooks is not None:
            self.webhooks.close()
            self.webhooks = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self.port}"

    # ---- the book ------------------------------------------------------------------------------------
    @property
    def now(self) -> int:
        return self.book.now

    def advance(self, days: float = 1) -> dict[str, Any]:
        """Move the simulated clock on; returns what changed (counts and the ids touched)."""
        with self.lock:
            start = self.book.now
            summary = self.book.advance(days)
            events = sorted(summary.new_events, key=lambda e: (e.created, e.seq))
        if self.webhooks is not None:
            for event in events:
                self.webhooks.send(event.body)
        return {
            "from": start,
            "to": self.book.now,
            "days": days,
            "changes": dict(summary.changes),
            "events": dict(summary.events),
            "event_ids": [event.id for event in events],
            "touched": {name: sorted(ids) for name, ids in summary.touched.items()},
        }

    def objects(self, resource: str, livemode: bool = False, variant: str = "") -> list[dict[str, Any]]:
        """Every live object of a resource as the API renders it, newest first (subscriptions: all
        statuses; events: the last 30 days; deleted objects left out)."""
        if resource not in RESOURCES or resource == "subscription_items":
            raise ValueError(f"unknown resource {resource!r}")
        with self.lock:
            blobs = [obj.json_bytes(self.book, variant) for obj in self.book.stores[resource].live()]
        if livemode:
            blobs = [blob.replace(b'"livemode":false', b'"livemode":true') for blob in blobs]
        return [orjson.loads(blob) for blob in blobs]

    def scenarios(self) -> dict[str, set[str]]:
        """Scenario truth for tests: customer id -> labels of what happened to them."""
        with self.lock:
            return self.book.scenarios()

    # ---- keys, load, faults, webhooks ------------------------------------------------------------
    def add_key(self, key: str, permissions: set[str] | frozenset[str] | list[str] | None = None) -> None:
        self.keys[key] = key_info(key, permissions)

    def configure_load(
        self,
        latency_ms: float | None = None,
        jitter_ms: float | None = None,
        rate_limit: bool | tuple[float, float] | list[float] | None = None,
    ) -> None:
        if latency_ms is not None:
            self.settings.latency_ms = float(latency_ms)
        if jitter_ms is not None:
            self.settings.jitter_ms = float(jitter_ms)
        if rate_limit is True:
            rate_limit = DEFAULT_RATE_LIMIT
        if not rate_limit:
            self.settings.rate_limit = None
            self.buckets = {}
        else:
            live, test = rate_limit
            self.settings.rate_limit = (float(live), float(test))
            self.buckets = {True: TokenBucket(float(live)), False: TokenBucket(float(test))}

    def bucket(self, livemode: bool) -> TokenBucket | None:
        return self.buckets.get(livemode)

    def jitter(self) -> float:
        return self._jitter_rng.random() * self.settings.jitter_ms

    def set_faults(self, faults: str | dict[str, float] | None, seed: int = 0, slow_ms: int = 2000) -> None:
        self.faults = Faults(parse_faults(faults), seed=seed, slow_ms=slow_ms)

    def configure_webhooks(self, url: str | None, secret: str) -> None:
        if self.webhooks is not None:
            self.webhooks.close()
            self.webhooks = None
        if url:
            if not secret.startswith("whsec_"):
                raise ValueError("webhook secrets start with whsec_")
            self.webhooks = WebhookSender(url, secret)

    def state(self) -> dict[str, Any]:
        with self.lock:
            counts = {
                name: sum(1 for _ in store.live())
                for name, store in self.book.stores.items()
                if store.objects
            }
        return {
            "now": self.now,
            "now_iso": datetime.fromtimestamp(self.now, UTC).isoformat().replace("+00:00", "Z"),
            "seed": self.book.seed,
            "counts": counts,
            "latency_ms": self.settings.latency_ms,
            "jitter_ms": self.settings.jitter_ms,
            "rate_limit": self.settings.rate_limit,
            "faults": self.faults.rates,
            "fault_kinds": list(FAULT_KINDS),
            "keys": sorted(k[:8] + "..." for k in self.keys),
            "webhooks": None if self.webhooks is None else self.webhooks.url,
            "requests": len(self.request_log),
            "requests_by_status": {str(status): n for status, n in self.request_log.statuses().items()},
        }

    # ---- /_emulator/ admin ---------------------------------------------------------------------
    def admin(self, method: str, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        try:
            args = {k: v[-1] for k, v in parse_qs(query).items()}
            data: dict[str, Any] = orjson.loads(body) if body.strip() else {}
            return 200, orjson.dumps(self._admin(method, path, args, data))
        except (ValueError, TypeError, KeyError) as error:
            return 400, orjson.dumps({"error": {"message": str(error), "type": "invalid_request_error"}})

    def _admin(self, method: str, path: str, args: dict[str, str], data: dict[str, Any]) -> Any:
        route = (method, path.rstrip("/"))
        if route == ("GET", "/_emulator/state"):
            return self.state()
        if route == ("GET", "/_emulator/scenarios"):
            return {cid: sorted(labels) for cid, labels in self.scenarios().items()}
        if route == ("POST", "/_emulator/advance"):
            return self.advance(days=float(args.get("days", data.get("days", 1))))
        if route == ("POST", "/_emulator/keys"):
            self.add_key(data["key"], data.get("permissions"))
            return {"ok": True}
        if route == ("POST", "/_emulator/faults"):
            if "faults" in data or "seed" in data or "slow_ms" in data:
                self.set_faults(data.get("faults"), int(data.get("seed", 0)), int(data.get("slow_ms", 2000)))
            rate_limit = data.get("rate_limit", self.settings.rate_limit)
            self.configure_load(data.get("latency_ms"), data.get("jitter_ms"), rate_limit)
            return self.state()
        if route == ("POST", "/_emulator/webhooks"):
            self.configure_webhooks(data.get("url"), data.get("secret", ""))
            return {"ok": True}
        raise ValueError(f"unknown admin route {method} {path}")
