"""perly-webhooks: the real-time path. Stripe webhook POSTs -> verified events -> the Perly store.

    PERLY_WEBHOOK_SECRETS=whsec_... perly-webhooks --config destination_config.json --port 8787

Every event is verified with the stripe library against each configured signing secret (bad, missing
or stale signature: 400, nothing stored), stored through the destination's own write path
(`destination_perly.ingest.Ingestor`) before the 2xx goes back, and its customers' health is then
recomputed on a background thread. See docs/WEBHOOKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

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


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body (the signature covers its exact bytes), or None when it is over `limit`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: ReceiverSettings) -> Starlette:
    """The ASGI app. Its lifespan starts and stops the processor's threads."""

    async def receive_webhook(request: Request) -> JSONResponse:
        try:
            body = await _read_body(request, MAX_BODY_BYTES)
        except ClientDisconnect:
            return _error(400, "client disconnected")
        if body is None:
            return _error(413, "body too large for a Stripe event")
        try:
            settings.verifier.verify(body, request.headers.get("stripe-signature"))
        except InvalidSignature as error:
            log.warning("rejected a webhook: %s", error)
            return _error(400, f"signature verification failed: {error}")
        try:
            plan = plan_event(orjson.loads(body))
        except (orjson.JSONDecodeError, MalformedEvent) as error:
            log.warning("rejected a signed body that is not a Stripe event: %s", error)
            return _error(400, f"not a Stripe event: {error}")
        if plan.ignored:
            log.info("ignored %s %s: %s", plan.event_type, plan.event_id, plan.ignored_reason)
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
        return JSONResponse({"status": "ok", **settings.processor.stats()})

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
    from destination_perly.config import open_store, parse_config
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

    processor = WebhookProcessor(make_store, make_ingestor, clock)
    return ReceiverSettings(
        SignatureVerifier(secrets, tolerance_seconds), processor, path, on_event_time=on_event_time
    )


def load_config_file(path: str) -> dict[str, Any]:
    try:
        loaded = json.loads(Path(path).read_text())
    except OSError as error:
        raise SystemExit(f"perly-webhooks: cannot read the config file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"perly-webhooks: {path} is not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise SystemExit(f"perly-webhooks: {path} must hold a JSON object")
    return loaded


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
        from destination_perly.config import ConfigError, parse_config

        parse_config(raw_config)
    except SecretsNotConfigured as error:
        sys.exit(f"perly-webhooks: {error}")
    except ConfigError as error:
        sys.exit(f"perly-webhooks: bad config: {error}")
    os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    os.environ["PERLY_WEBHOOK_TOLERANCE"] = str(args.tolerance)
    os.environ["PERLY_WEBHOOK_PATH"] = args.path
    os.environ["PERLY_WEBHOOK_LOG_LEVEL"] = args.log_level
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
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
