"""Fixtures for the destination's tests: the same store tests run on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from destination_perly.store.base import Store
from destination_perly.store.sqlite import SqliteStore
from integration_tests.postgres import postgres_dsn


class StoreFactory:
    """Opens stores on one database (several connections, like several processes would)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "perly.db"
        self.schema = f"perly_t_{uuid.uuid4().hex[:10]}"
        self.opened: list[Store] = []

    def open(self) -> Store:
        store: Store
        if self.kind == "sqlite":
            store = SqliteStore(self.path)
        else:
            from destination_perly.store.postgres import PostgresStore

            store = PostgresStore(dsn=postgres_dsn(), schema=self.schema)
        self.opened.append(store)
        return store

    def cleanup(self) -> None:
        for store in self.opened:
            store.close()
        if self.kind == "postgres" and self.opened:
            import psycopg

            with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    opened = store_factory.open()
    opened.ensure_schema()
    return opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "perly.db")
    opened.ensure_schema()
    yield opened
    opened.close()


@pytest.fixture
def postgres_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    opened = StoreFactory("postgres", tmp_path)
    yield opened
    opened.cleanup()


@contextmanager
def writer_mid_transaction(factory: StoreFactory, table: str) -> Iterator[None]:
    """Another connection (a webhook receiver) between its insert into `table` and its commit, which
    it makes on leaving the block: it was never blocked meanwhile."""
    import psycopg

    writer = psycopg.connect(postgres_dsn())
    try:
        writer.execute(
            f'INSERT INTO "{factory.schema}".{table} (id, updated, data) VALUES (%s, 1, %s)', ("in_w", "{}")
        )
        yield
        writer.commit()
    finally:
        writer.close()


def opens_without_waiting(store: Store) -> bool:
    """Whether the store's `ensure_schema` returned within 30 s (instead of waiting for a writer)."""
    opening = threading.Thread(target=store.ensure_schema, daemon=True)
    opening.start()
    opening.join(timeout=30)
    return not opening.is_alive()
