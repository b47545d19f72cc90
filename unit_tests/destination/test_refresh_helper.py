"""A big refresh shares its chunks with a forked helper process: same results, same locking."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from destination_perly import ingest
from destination_perly.health.model import CustomerBundle, CustomerEvaluation, HealthConfig
from destination_perly.ingest import Ingestor, customer_ids_of
from destination_perly.store.base import Store
from destination_perly.store.sqlite import SqliteStore
from integration_tests.stripe_emulator import Emulator
from unit_tests.destination.builders import AS_OF, FakeEngine, subscription
from unit_tests.destination.conftest import StoreFactory

STREAMS = ("products", "prices", "coupons", "customers", "subscriptions", "invoices", "charges", "events")
RESULT_TABLES = ("perly_customer_health", "perly_mrr_movements", "perly_plan_changes", "perly_mrr_snapshots")


def _everything(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Every result row, in a fixed order (rows of one customer may be saved in any order; PostgreSQL's
    `seq`, the insertion order across customers, is left out)."""
    return {
        table: sorted(
            tuple(v for k, v in r.items() if k != "seq") for r in store.query(f"SELECT * FROM {table}")
        )
        for table in RESULT_TABLES
    }


@pytest.fixture(scope="module")
def book_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    """The emulator's book of 80 customers stored, every customer pending."""
    emulator = Emulator(customers=80, seed=7)
    path = tmp_path_factory.mktemp("book") / "book.db"
    store = SqliteStore(path, customer_ids_of)
    store.ensure_schema()
    ingestor = Ingestor(store, HealthConfig())
    for stream in STREAMS:
        versioned = [
            {**obj, "updated": obj.get("created", emulator.now) if stream == "events" else emulator.now}
            for obj in emulator.objects(stream)
        ]
        ingestor.upsert(stream, versioned)
    store.close()
    return path, datetime.fromtimestamp(emulator.now, UTC)


def _refresh_copy(
    book: Path, tmp_path: Path, name: str, helper_min: int | None
) -> dict[str, list[tuple[object, ...]]]:
    path = tmp_path / name
    shutil.copy(book, path)
    store = SqliteStore(path, customer_ids_of)
    try:
        ingestor = Ingestor(store, HealthConfig(), refresh_chunk=16, helper_min_customers=helper_min)
        pending = store.dirty_customers()
        result = ingestor.refresh_pending(datetime(2026, 11, 1, tzinfo=UTC))
        assert result.refreshed == len(pending) == 80
        assert store.dirty_customers() == set()
        return _everything(store)
    finally:
        store.close()


def test_given_a_helper_process_when_refreshing_the_book_then_results_match_one_process(
    book_db: tuple[Path, datetime], tmp_path: Path
) -> None:
    book, _now = book_db
    alone = _refresh_copy(book, tmp_path, "alone.db", helper_min=None)
    helped = _refresh_copy(book, tmp_path, "helped.db", helper_min=1)
    assert len(alone["perly_customer_health"]) == 80
    assert alone["perly_mrr_movements"]  # the book has history: the comparison is not of empty tables
    assert helped == alone


def _pending(factory: StoreFactory, customers: int) -> Store:
    """`customers` customers with a subscription each, all pending."""
    store = factory.open()
    store.ensure_schema()
    Ingestor(store, HealthConfig(), evaluate=FakeEngine()).upsert(
        "subscriptions", [subscription(f"sub_{n}", f"cus_{n:02}", amount=100 + n) for n in range(customers)]
    )
    return store


def test_the_helper_reads_and_evaluates_only_while_the_main_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "perly.db"
    store = _pending(StoreFactory("sqlite", tmp_path), 40)
    main_pid = os.getpid()
    engine = FakeEngine()

    def evaluate(bundle: CustomerBundle, config: HealthConfig, as_of: datetime) -> CustomerEvaluation:
        evaluation = engine(bundle, config, as_of)
        where = "main"
        if os.getpid() != main_pid:
            probe = sqlite3.connect(path, timeout=0)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                where = "helper, unlocked"
            except sqlite3.OperationalError:
                where = "helper, locked"
            finally:
                probe.close()
        return dataclasses.replace(evaluation, health=dataclasses.replace(evaluation.health, name=where))

    ingestor = Ingestor(store, HealthConfig(), evaluate=evaluate, refresh_chunk=10, helper_min_customers=1)
    assert ingestor.refresh_pending(AS_OF).refreshed == 40

    rows = store.query("SELECT name, COUNT(*) AS n, SUM(mrr) AS mrr FROM perly_customer_health GROUP BY name")
    by_where = {r["name"]: r["n"] for r in rows}
    assert by_where == {"helper, locked": 20, "main": 20}
    assert sum(int(r["mrr"]) for r in rows) == sum(100 + n for n in range(40))
    assert store.dirty_customers() == set()
    store.close()


def _die() -> None:
    os._exit(3)


def _hang() -> None:
    time.sleep(3600)


@pytest.mark.parametrize("misbehave", [_die, _hang], ids=["dies", "hangs"])
def test_given_the_helper_fails_then_the_main_process_refreshes_every_customer_itself(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch, misbehave: Callable[[], None]
) -> None:
    """On SQLite the helper evaluates half of each chunk, on PostgreSQL it refreshes chunks of its own:
    either way the main process does what a failed helper left unsaved."""
    monkeypatch.setattr(ingest, "HELPER_TIMEOUT_SECONDS", 0.5)  # a hung helper is given up on quickly
    store = _pending(store_factory, 30)
    main_pid = os.getpid()
    engine = FakeEngine()

    def misbehaves_in_the_helper(
        bundle: CustomerBundle, config: HealthConfig, as_of: datetime
    ) -> CustomerEvaluation:
        if os.getpid() != main_pid:
            misbehave()
        return engine(bundle, config, as_of)

    ingestor = Ingestor(
        store, HealthConfig(), evaluate=misbehaves_in_the_helper, refresh_chunk=10, helper_min_customers=1
    )
    result = ingestor.refresh_pending(AS_OF)

    assert result.refreshed == 30
    assert result.failed == []
    assert {c for c, _ in engine.calls} == {f"cus_{n:02}" for n in range(30)}
    assert store.query("SELECT COUNT(*) AS n FROM perly_customer_health") == [{"n": 30}]
    assert store.dirty_customers() == set()


def test_given_an_engine_failure_in_the_helper_then_that_customer_stays_pending_and_the_rest_are_saved(
    tmp_path: Path,
) -> None:
    store = _pending(StoreFactory("sqlite", tmp_path), 20)
    engine = FakeEngine()
    engine.fail_for = {"cus_03"}  # cus_03 falls in the helper's half of the first chunk
    ingestor = Ingestor(store, HealthConfig(), evaluate=engine, refresh_chunk=10, helper_min_customers=1)

    result = ingestor.refresh_pending(AS_OF)

    assert result.failed == ["cus_03"]
    assert result.refreshed == 19
    assert store.dirty_customers() == {"cus_03"}
    store.close()


def test_small_refreshes_and_stores_without_a_second_connection_stay_in_one_process(tmp_path: Path) -> None:
    memory = SqliteStore(":memory:")
    assert memory.reader_opener() is None
    memory.close()
    store = _pending(StoreFactory("sqlite", tmp_path), 5)
    engine = FakeEngine()

    def note_pid(bundle: CustomerBundle, config: HealthConfig, as_of: datetime) -> CustomerEvaluation:
        evaluation = engine(bundle, config, as_of)
        return dataclasses.replace(
            evaluation, health=dataclasses.replace(evaluation.health, name=str(os.getpid()))
        )

    Ingestor(store, HealthConfig(), evaluate=note_pid, helper_min_customers=6).refresh_pending(AS_OF)
    names = store.query("SELECT DISTINCT name FROM perly_customer_health")
    assert names == [{"name": str(os.getpid())}]
    store.close()


def test_given_the_helper_cannot_open_the_store_then_the_refresh_still_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _pending(StoreFactory("sqlite", tmp_path), 12)

    def cannot_open() -> Store:
        raise OSError("too many open files")

    monkeypatch.setattr(store, "reader_opener", lambda: cannot_open)
    ingestor = Ingestor(store, HealthConfig(), evaluate=FakeEngine(), refresh_chunk=5, helper_min_customers=1)

    assert ingestor.refresh_pending(AS_OF).refreshed == 12
    assert store.dirty_customers() == set()
    store.close()


@pytest.mark.postgres
def test_on_postgres_the_helper_refreshes_its_own_chunks_holding_their_customers_itself(
    postgres_factory: StoreFactory,
) -> None:
    """PostgreSQL takes several writers at once: the helper locks, evaluates and saves its chunks on its
    own connection (the main process never waits to save them), each customer held while evaluated."""
    import psycopg

    from integration_tests.postgres import postgres_dsn

    store = _pending(postgres_factory, 20)
    main_pid, schema = os.getpid(), postgres_factory.schema
    main_backend = store._conn.info.backend_pid  # type: ignore[attr-defined]
    engine = FakeEngine()

    def evaluate(bundle: CustomerBundle, config: HealthConfig, as_of: datetime) -> CustomerEvaluation:
        evaluation = engine(bundle, config, as_of)
        with psycopg.connect(postgres_dsn(), autocommit=True) as probe:
            key = f"perly:{schema}:{bundle.customer_id}"
            free = probe.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
            holders = probe.execute(  # the connections holding this customer's advisory lock
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND ((classid::bigint << 32) | objid::bigint) = hashtext(%s)::bigint",
                (key,),
            ).fetchall()
        held = "unlocked" if free and free[0] else "locked"
        by = "by main" if (main_backend,) in holders else "by itself"
        where = "main" if os.getpid() == main_pid else f"helper, {held} {by}"
        return dataclasses.replace(evaluation, health=dataclasses.replace(evaluation.health, name=where))

    ingestor = Ingestor(store, HealthConfig(), evaluate=evaluate, refresh_chunk=4, helper_min_customers=1)
    assert ingestor.refresh_pending(AS_OF).refreshed == 20

    rows = store.query("SELECT name, COUNT(*) AS n FROM perly_customer_health GROUP BY name ORDER BY name")
    assert {r["name"] for r in rows} == {"helper, locked by itself", "main"}
    assert sum(int(r["n"]) for r in rows) == 20
    assert store.dirty_customers() == set()


@pytest.mark.postgres
def test_on_postgres_an_engine_failure_in_the_helper_is_reported_and_that_customer_stays_pending(
    postgres_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = _pending(postgres_factory, 20)
    engine = FakeEngine()
    engine.fail_for = {"cus_01"}  # in the first chunk, the helper's
    ingestor = Ingestor(store, HealthConfig(), evaluate=engine, refresh_chunk=10, helper_min_customers=1)

    result = ingestor.refresh_pending(AS_OF)

    assert result.failed == ["cus_01"]
    assert result.refreshed == 19
    assert store.dirty_customers() == {"cus_01"}
    assert "health evaluation failed for customer cus_01" in caplog.text  # logged by the main process


@pytest.mark.postgres
def test_on_postgres_a_helper_saving_its_own_chunks_stores_what_one_process_would(
    postgres_factory: StoreFactory, tmp_path: Path
) -> None:
    emulator = Emulator(customers=80, seed=7)
    other = StoreFactory("postgres", tmp_path)
    try:
        stores = []
        for factory in (postgres_factory, other):
            store = factory.open()
            store._customer_ids_of = customer_ids_of  # type: ignore[attr-defined]
            store.ensure_schema()
            ingestor = Ingestor(store, HealthConfig())
            for stream in STREAMS:
                ingestor.upsert(
                    stream,
                    [
                        {
                            **obj,
                            "updated": obj.get("created", emulator.now)
                            if stream == "events"
                            else emulator.now,
                        }
                        for obj in emulator.objects(stream)
                    ],
                )
            stores.append(store)
        results = []
        for store, helper_min in zip(stores, (None, 1), strict=True):
            ingestor = Ingestor(store, HealthConfig(), refresh_chunk=16, helper_min_customers=helper_min)
            assert ingestor.refresh_pending(datetime(2026, 11, 1, tzinfo=UTC)).refreshed == 80
            assert store.dirty_customers() == set()
            results.append(_everything(store))
        alone, helped = results
        assert len(alone["perly_customer_health"]) == 80
        assert alone["perly_mrr_movements"]  # the book has history: the comparison is not of empty tables
        assert helped == alone
    finally:
        other.cleanup()
