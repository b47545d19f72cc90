from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # starlette 1.x suggests httpx2 for its TestClient; the installed httpx works the same.
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

from destination_perly.config import DestinationConfig, open_store, parse_config
from destination_perly.ingest import customer_ids_of
from destination_perly.store.base import Store
from destination_perly.webhooks import DEFAULT_PATH, ReceiverSettings, create_app, settings_from_config
from unit_tests.webhooks.builders import OLD_SECRET, SECRET, T0


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Receiver:
    client: TestClient
    settings: ReceiverSettings
    store: Store  # a separate connection, for the test's own reads and "sync" writes
    clock: FakeClock
    config: dict[str, Any]

    def post(self, delivery: dict[str, Any]) -> Any:
        return self.client.post(DEFAULT_PATH, **delivery)

    def wait(self) -> None:
        assert self.settings.processor.wait_idle(20), "the receiver did not finish applying in time"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self.store.query(sql, params)

    def health(self, customer_id: str) -> dict[str, Any]:
        rows = self.rows("SELECT * FROM perly_customer_health WHERE customer_id = ?", (customer_id,))
        assert rows, f"no health row for {customer_id}"
        return rows[0]


def sqlite_config(tmp_path: Path) -> dict[str, Any]:
    return {"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}}


def store_opener(config: DestinationConfig) -> Callable[[], Store]:
    """What the receiver is given to open its connections: the store, its schema ensured."""

    def open_with_schema() -> Store:
        store = open_store(config.store, customer_ids_of)
        store.ensure_schema()
        return store

    return open_with_schema


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.fromtimestamp(T0 + 3600, UTC))


@pytest.fixture
def receiver(tmp_path: Path, clock: FakeClock) -> Iterator[Receiver]:
    config = sqlite_config(tmp_path)
    settings = settings_from_config(config, [SECRET, OLD_SECRET], clock=clock)
    reader = open_store(parse_config(config).store)
    with TestClient(create_app(settings)) as client:
        reader.ensure_schema()
        yield Receiver(client, settings, reader, clock, config)
    reader.close()
