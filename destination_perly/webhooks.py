"""perly-webhooks: the real-time path. Stripe webhook POSTs -> verified events -> the Perly store.

    PERLY_WEBHOOK_SECRETS=whsec_... perly-webhooks --config destination_config.json --port 8787

Every event is verified with the stripe library against each configured signing secret (bad, missing
or stale signature: 400, nothing stored), stored through the destination's own write path
(`destination_perly.ingest.Ingestor`) before the 2xx goes back, and its customers' health is then
recomputed on a background thread. See docs/WEBHOOKS.md.

Slow or stalled clients cannot hold connections: the request head must arrive within
`--header-timeout` seconds (uvicorn has no such limit: `GuardedH11Protocol` adds it), the body within
`--body-timeout`, and above `--limit-concurrency` open connections new requests get 503.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h11
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from destination_perly.config import ConfigError, load_json_object, parse_config
from destination_perly.store.base import holds_nul, without_nul
from destination_perly.webhook_apply import (
    REFRESH_CHUNK_CUSTOMERS,
    Clock,
    Ingestor,
    WebhookProcessor,
    wall_clock,
)
from destination_perly.webhook_events import MalformedEvent, plan_event
from destination_perly.webhook_signature import (
    DEFAULT_TOLERANCE_SECONDS,
    InvalidSignature,
    SecretsNotConfigured,
    SignatureVerifier,
    secrets_from_env,
)

log = logging.getLogger("perly.webhooks")

DEFAULT_PATH = "/webhooks/stripe"
DEFAULT_PORT = 8787
# Stripe's events are a few KB to a few hundred KB; anything far larger is not from Stripe.
MAX_BODY_BYTES = 2 * 1024 * 1024
# Stripe gives up on a delivery after about 10 s and retries later: answer 503 before that.
STORE_WAIT_SECONDS = 8.0
CONFIG_ENV = "PERLY_WEBHOOK_CONFIG"  # how `--workers` hands the config path to each worker process
# Limits on slow clients (slow-loris). Stripe sends a whole event in well under a second.
HEADER_TIMEOUT_SECONDS = 10.0
BODY_TIMEOUT_SECONDS = 10.0
LIMIT_CONCURRENCY = 500
HEADER_TIMEOUT_ENV = "PERLY_WEBHOOK_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "PERLY_WEBHOOK_BODY_TIMEOUT"
# Idle time allowed between two requests of a kept-alive connection (uvicorn's timeout_keep_alive).
KEEP_ALIVE_SECONDS = 30


class EventTimeClock:
    """For a simulated Stripe (the emulator, a fixed `as_of`): now = the newest event time seen, never
    before the configured `as_of`. Real deployments use the wall clock."""

    def __init__(self, floor: datetime) -> None:
        self._newest = floor
        self._lock = threading.Lock()

    def observe(self, created: int) -> None:
        seen = datetime.fromtimestamp(created, UTC)
        with self._lock:
            self._newest = max(self._newest, seen)

    def __call__(self) -> datetime:
        with self._lock:
            return self._newest


@dataclass
class ReceiverSettings:
    verifier: SignatureVerifier
    processor: WebhookProcessor
    path: str = DEFAULT_PATH
    store_wait_seconds: float = STORE_WAIT_SECONDS
    on_event_time: Callable[[int], None] | None = None
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head. uvicorn has none: a client
    sending its headers a byte at a time (slow-loris) held its connection forever. The deadline runs
    from the connection's start, or from the previous response plus the keep-alive time."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV, HEADER_TIMEOUT_SECONDS))
        self.head_deadline: asyncio.TimerHandle | None = None
        self._arm_head_deadline(self.head_timeout)

    def _arm_head_deadline(self, seconds: float) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        self.head_deadline = self.loop.call_later(seconds, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info(
                "closed a connection from %s: no request head within %.0fs", self.client, self.head_timeout
            )
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.head_deadline is not None and self.conn.their_state is not h11.IDLE:  # the head is in
            self.head_deadline.cancel()
            self.head_deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline(self.timeout_keep_alive + self.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None
        super().connection_lost(exc)


class BodyTooSlow(Exception):
    pass


async def _read_body(request: Request, limit: int, timeout: float) -> bytes | None:
    """The raw body (the signature covers its exact bytes), or None when it is over `limit`. Raises
    BodyTooSlow when it does not arrive whole within `timeout` seconds."""
    declared = request.headers.get("content-length")
    if declared and declared.isdecimal() and int(declared) > limit:
        return None
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTooSlow from None
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: ReceiverSettings) -> Starlette:
    """The ASGI app. Its lifespan starts and stops the processor's threads."""

    async def receive_webhook(request: Request) -> JSONResponse:
        try:
            body = await _read_body(request, MAX_BODY_BYTES, settings.body_timeout_seconds)
        except ClientDisconnect:
            return _error(400, "client disconnected")
        except BodyTooSlow:
            log.warning("dropped a request whose body took over %.0fs", settings.body_timeout_seconds)
            return JSONResponse({"error": "body too slow"}, status_code=408, headers={"Connection": "close"})
        if body is None:
            return _error(413, "body too large for a Stripe event")
        try:
            settings.verifier.verify(body, request.headers.get("stripe-signature"))
        except InvalidSignature as error:
            log.warning("rejected a webhook: %s", error)
            return _error(400, f"signature verification failed: {error}")
        try:
            event = orjson.loads(body)
            plan = plan_event(without_nul(event) if holds_nul(body) else event)
        except (orjson.JSONDecodeError, MalformedEvent, RecursionError) as error:
            log.warning("rejected a signed body that is not a Stripe event: %s", error)
            return _error(400, f"not a Stripe event: {error}")
        if plan.ignored:
            settings.processor.note_ignored(plan)
            # Another API version means a wrongly registered endpoint: nothing it sends is applied.
            level = logging.WARNING if plan.wrong_api_version else logging.INFO
            log.log(level, "ignored %s %s: %s", plan.event_type, plan.event_id, plan.ignored_reason)
            return JSONResponse({"received": True, "id": plan.event_id, "status": "ignored"})
        if settings.on_event_time is not None:
            settings.on_event_time(plan.created)
        try:
            outcome = await asyncio.wait_for(
                asyncio.wrap_future(settings.processor.submit(plan)), settings.store_wait_seconds
            )
        except TimeoutError:
            # The write may still land; Stripe's retry then finds it done (duplicate, 200).
            log.error(
                "storing %s took longer than %.0fs; asking Stripe to retry",
                plan.event_id,
                settings.store_wait_seconds,
            )
            return _error(503, "store busy, retry later")
        except Exception as error:
            log.error("could not store %s: %s", plan.event_id, error)
            return _error(503, "store unavailable, retry later")
        log.info("%s %s %s", outcome.value, plan.event_type, plan.event_id)
        return JSONResponse({"received": True, "id": plan.event_id, "status": outcome.value})

    async def health(request: Request) -> JSONResponse:
        """200 when the store answers the writer's connection, else 503 (events get 503 too)."""
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(settings.processor.probe()), settings.store_wait_seconds
            )
            store = "ok"
        except TimeoutError:
            store = "busy"
        except Exception as error:
            log.error("health check: the store is unavailable: %s", error)
            store = "unavailable"
        body = {"status": "ok" if store == "ok" else "degraded", "store": store, **settings.processor.stats()}
        return JSONResponse(body, status_code=200 if store == "ok" else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(settings.processor.start)
        try:
            yield
        finally:
            await asyncio.to_thread(settings.processor.stop)

    routes = [
        Route(settings.path, receive_webhook, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


# --- wiring to the destination's configuration -----------------------------------------------------
def settings_from_config(
    raw_config: dict[str, Any],
    secrets: list[str],
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    path: str = DEFAULT_PATH,
    clock: Clock | None = None,
) -> ReceiverSettings:
    """The same config JSON as the Airbyte destination: same store, plan tiers and risk policy."""
    from destination_perly.config import PostgresSettings, open_store, parse_config
    from destination_perly.ingest import Ingestor, customer_ids_of

    config = parse_config(raw_config)
    on_event_time = None
    if clock is None:
        if config.as_of is not None:
            event_clock = EventTimeClock(config.as_of)
            clock, on_event_time = event_clock, event_clock.observe
        else:
            clock = wall_clock

    def make_store() -> Any:
        store = open_store(config.store, customer_ids_of)
        store.ensure_schema()
        return store

    def make_ingestor(store: Any) -> Ingestor:
        return Ingestor(store, config.health, refresh_chunk=REFRESH_CHUNK_CUSTOMERS)

    # On PostgreSQL any number of receivers share the store (`--workers`, several hosts), and the
    # connections a burst comes over may all go to one of them: the idle ones take their refreshes.
    processor = WebhookProcessor(
        make_store,
        make_ingestor,
        clock,
        help_other_receivers=isinstance(config.store, PostgresSettings),
    )
    return ReceiverSettings(
        SignatureVerifier(secrets, tolerance_seconds), processor, path, on_event_time=on_event_time
    )


def load_config_file(path: str) -> dict[str, Any]:
    try:
        return load_json_object(path)
    except ConfigError as error:
        raise SystemExit(f"perly-webhooks: {error}") from None


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and `--workers`: config path and options from the environment."""
    # Runs in every worker process (spawned: the parent's logging setup is not inherited).
    level = os.environ.get("PERLY_WEBHOOK_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path = os.environ.get(CONFIG_ENV)
    if not config_path:
        raise SystemExit(f"perly-webhooks: {CONFIG_ENV} is not set")
    settings = settings_from_config(
        load_config_file(config_path),
        secrets_from_env(),
        tolerance_seconds=int(os.environ.get("PERLY_WEBHOOK_TOLERANCE", DEFAULT_TOLERANCE_SECONDS)),
        path=os.environ.get("PERLY_WEBHOOK_PATH", DEFAULT_PATH),
    )
    settings.body_timeout_seconds = float(os.environ.get(BODY_TIMEOUT_ENV, BODY_TIMEOUT_SECONDS))
    return create_app(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perly-webhooks",
        description="Receive Stripe webhooks and apply them to the Perly store in real time. "
        "Signing secrets come from PERLY_WEBHOOK_SECRETS (comma-separated while rotating).",
    )
    parser.add_argument(
        "--config", required=True, help="the destination's config JSON (store, plan tiers, policy)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)"
    )
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"the endpoint path (default {DEFAULT_PATH})")
    parser.add_argument(
        "--tolerance",
        type=int,
        default=DEFAULT_TOLERANCE_SECONDS,
        help="reject signatures older than this many seconds (default 300, Stripe's)",
    )
    parser.add_argument("--workers", type=int, default=1, help="receiver processes (PostgreSQL or SQLite)")
    parser.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (default on)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="comma-separated proxy addresses whose X-Forwarded-* headers are trusted (default 127.0.0.1)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_SECONDS,
        help=f"close a connection whose request head takes longer (default {HEADER_TIMEOUT_SECONDS:.0f} s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT_SECONDS,
        help=f"answer 408 to a request whose body takes longer (default {BODY_TIMEOUT_SECONDS:.0f} s)",
    )
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        default=LIMIT_CONCURRENCY,
        help=f"above this many open connections per process, answer 503 (default {LIMIT_CONCURRENCY})",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        secrets_from_env()  # fail before binding the port; the message never shows a secret
        raw_config = load_config_file(args.config)
        parse_config(raw_config)
    except SecretsNotConfigured as error:
        sys.exit(f"perly-webhooks: {error}")
    except ConfigError as error:
        sys.exit(f"perly-webhooks: bad config: {error}")
    os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    os.environ["PERLY_WEBHOOK_TOLERANCE"] = str(args.tolerance)
    os.environ["PERLY_WEBHOOK_PATH"] = args.path
    os.environ["PERLY_WEBHOOK_LOG_LEVEL"] = args.log_level
    os.environ[HEADER_TIMEOUT_ENV] = str(args.header_timeout)
    os.environ[BODY_TIMEOUT_ENV] = str(args.body_timeout)
    uvicorn.run(
        "destination_perly.webhooks:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_level=args.log_level,
        # Stripe retries on timeouts; keep-alive connections are reused between its deliveries.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        http=GuardedH11Protocol,
        limit_concurrency=args.limit_concurrency,
    )


if __name__ == "__main__":
    main()
