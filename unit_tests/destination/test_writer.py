"""The writer's protocol promises: buffering, flushes, state acknowledgement, staging, generations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from airbyte_cdk.models import (
    AirbyteMessage,
    AirbyteMessageSerializer,
    AirbyteStreamStatus,
    DestinationSyncMode,
    Level,
    Type,
)

from destination_perly.health.model import HealthConfig
from destination_perly.ingest import Ingestor
from destination_perly.input_reader import read_in_helper
from destination_perly.store.base import Store, table_for_stream
from destination_perly.store.sqlite import SqliteStore
from destination_perly.writer import (
    InputMessage,
    StreamPlan,
    Writer,
    WriterLimits,
    parse_input_lines,
    plans_from_catalog,
)
from unit_tests.destination.builders import (
    AS_OF,
    T0,
    FakeEngine,
    customer,
    customer_ids,
    invoice,
    subscription,
    tombstone,
)
from unit_tests.destination.conftest import StoreFactory
from unit_tests.destination.messages import catalog, configured, global_state, record, status, stream_state


class CrashingStore(SqliteStore):
    """A store whose next commit fails once `armed` (a full disk, a killed connection...)."""

    armed = False

    def _commit(self) -> None:
        if self.armed:
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit()


def ids(store: Store, stream: str) -> list[str]:
    table = table_for_stream(stream)
    if table not in store._list_tables():
        return []
    return [str(r["id"]) for r in store.query(f"SELECT id FROM {table} ORDER BY id")]


# Every stream these tests write: the writer takes only the streams its catalog configures.
STREAMS = ("customers", "subscriptions", "invoices", "charges", "coupons", "prices", "products", "events")


def every_stream() -> dict[str, StreamPlan]:
    return plans_from_catalog(catalog(*(configured(name) for name in STREAMS)))


def make_writer(
    store: Store,
    plans: dict[str, StreamPlan] | None = None,
    limits: WriterLimits | None = None,
    engine: FakeEngine | None = None,
) -> Writer:
    ingestor = Ingestor(store, HealthConfig(), evaluate=engine or FakeEngine(), customer_ids=customer_ids)
    return Writer(ingestor, plans or every_stream(), as_of=lambda: AS_OF, limits=limits)


def states_of(output: Iterable[AirbyteMessage]) -> list[AirbyteMessage]:
    return [m for m in output if m.type == Type.STATE]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "perly.db")
    yield opened
    opened.close()


def test_given_interleaved_streams_when_one_stream_states_then_only_its_records_are_committed(
    store: SqliteStore,
) -> None:
    writer = make_writer(store)
    messages = [
        record("customers", customer("cus_1")),
        record("subscriptions", subscription("sub_1", "cus_1")),
        record("customers", customer("cus_2")),
        stream_state("customers", 1),
        record("subscriptions", subscription("sub_2", "cus_2")),
        stream_state("subscriptions", 2),
    ]
    seen = []
    for out in writer.write(messages):
        if out.type == Type.STATE:
            seen.append(
                (
                    out.state.stream.stream_descriptor.name,
                    ids(store, "customers"),
                    ids(store, "subscriptions"),
                )
            )
    assert seen == [
        ("customers", ["cus_1", "cus_2"], []),  # the subscriptions buffer was neither flushed nor dropped
        ("subscriptions", ["cus_1", "cus_2"], ["sub_1", "sub_2"]),
    ]


def test_given_a_global_state_then_every_stream_before_it_is_committed_first(store: SqliteStore) -> None:
    writer = make_writer(store)
    messages = [
        record("customers", customer("cus_1")),
        record("invoices", invoice("in_1", "cus_1")),
        global_state(7),
    ]
    seen = [
        (ids(store, "customers"), ids(store, "invoices"))
        for out in writer.write(messages)
        if out.type == Type.STATE
    ]
    assert seen == [(["cus_1"], ["in_1"])]


def test_given_states_then_they_are_echoed_unchanged_and_in_order(store: SqliteStore) -> None:
    sent = [stream_state("customers", 1), stream_state("invoices", 2), global_state(3)]
    messages = [record("customers", customer("cus_1")), sent[0], sent[1], sent[2]]
    echoed = states_of(make_writer(store).write(messages))
    assert [orjson.dumps(m.state.__dict__, default=str) for m in echoed] == [
        orjson.dumps(m.state.__dict__, default=str) for m in sent
    ]


class ReadAhead:
    """Input whose next messages have always arrived already, as when a source streams faster than
    the writer commits (`HelperInput.more_waiting` tells it from its queue)."""

    def __init__(self, messages: list[AirbyteMessage]) -> None:
        self.messages = messages

    def __iter__(self) -> Iterator[AirbyteMessage]:
        return iter(self.messages)

    def more_waiting(self) -> bool:
        return True


def test_given_input_already_waiting_then_states_share_a_commit_and_are_echoed_in_order_once_committed(
    store: SqliteStore,
) -> None:
    messages: list[AirbyteMessage] = []
    for n in range(1, 7):
        messages += [record("customers", customer(f"cus_{n}")), stream_state("customers", n)]
        messages += [record("invoices", invoice(f"in_{n}", f"cus_{n}")), stream_state("invoices", n)]
    writer = make_writer(store, limits=WriterLimits(max_records_per_stream=3))
    committed_at_echo: list[tuple[int, list[str]]] = []

    for out in writer.write(ReadAhead(messages)):
        if out.type == Type.STATE:
            state = out.state.stream  # type: ignore[union-attr]
            name = state.stream_descriptor.name  # type: ignore[union-attr]
            committed_at_echo.append((state.stream_state.updated, ids(store, name)))  # type: ignore[union-attr]

    # Every state, in order; each echoed only once the records before it were committed.
    assert [n for n, _ in committed_at_echo] == [n for n in range(1, 7) for _ in range(2)]
    for index, (n, committed) in enumerate(committed_at_echo):
        prefix = "cus" if index % 2 == 0 else "in"
        assert {f"{prefix}_{k}" for k in range(1, n + 1)} <= set(committed)
    # One commit per full buffer (3 records), not one per state.
    assert writer.stats.flushes == 4
    assert writer.stats.states == 12


class CommitsCostNothingMore(SqliteStore):
    """A store for which fewer commits save nothing (PostgreSQL, measured: larger batches cost it more)."""

    commits_rewrite_pages = False


def test_given_a_store_without_page_rewriting_commits_then_each_state_is_committed_at_once(
    tmp_path: Path,
) -> None:
    store = CommitsCostNothingMore(tmp_path / "perly.db")
    messages = [record("customers", customer("cus_1")), stream_state("customers", 1)]
    messages += [record("customers", customer("cus_2")), stream_state("customers", 2)]
    output = make_writer(store).write(ReadAhead(messages))

    first = next(m for m in output if m.type == Type.STATE)

    assert first.state.stream.stream_state.updated == 1  # type: ignore[union-attr]
    assert ids(store, "customers") == ["cus_1"]  # not held for cus_2
    store.close()


def test_given_states_held_then_they_wait_no_longer_than_the_limit(store: SqliteStore) -> None:
    clock = iter(float(t) for t in range(100))
    messages = [record("customers", customer("cus_1")), stream_state("customers", 1)]
    messages += [record("customers", customer("cus_2")), stream_state("customers", 2)]
    messages += [record("customers", customer("cus_3")), stream_state("customers", 3)]
    ingestor = Ingestor(store, HealthConfig(), evaluate=FakeEngine(), customer_ids=customer_ids)
    writer = Writer(
        ingestor,
        every_stream(),
        as_of=lambda: AS_OF,
        limits=WriterLimits(max_state_delay_s=1.5),
        monotonic=lambda: next(clock),
    )
    output = writer.write(ReadAhead(messages))

    first = next(m for m in output if m.type == Type.STATE)

    assert first.state.stream.stream_state.updated == 1  # type: ignore[union-attr]
    assert ids(store, "customers") == ["cus_1", "cus_2"]  # held at the first state, committed at the second


def test_given_a_commit_that_fails_then_the_state_after_those_records_is_never_acknowledged(
    tmp_path: Path,
) -> None:
    store = CrashingStore(tmp_path / "perly.db")
    acknowledged: list[AirbyteMessage] = []

    def messages() -> Iterator[AirbyteMessage]:
        yield record("customers", customer("cus_1"))
        yield stream_state("customers", 1)
        yield record("customers", customer("cus_2"))
        store.armed = True  # the commit that would cover cus_2 fails
        yield stream_state("customers", 2)

    def run() -> None:
        for out in make_writer(store).write(messages()):
            if out.type == Type.STATE:
                acknowledged.append(out)

    with pytest.raises(sqlite3.OperationalError):
        run()
    store.armed = False
    assert [m.state.stream.stream_state.updated for m in acknowledged] == [1]
    assert ids(store, "customers") == ["cus_1"]
    assert store.dirty_customers() == {"cus_1"}  # still pending: health never ran
    store.close()


def test_given_an_older_version_arriving_later_then_the_cursor_decides_not_the_arrival(
    store: SqliteStore,
) -> None:
    messages = [
        record("customers", customer("cus_1", updated=T0 + 100, name="new")),
        stream_state("customers", 1),
        record("customers", customer("cus_1", updated=T0 + 50, name="stale")),
        record("customers", customer("cus_2", updated=T0, name="a")),
        record("customers", customer("cus_2", updated=T0, name="b")),
    ]
    list(make_writer(store, plans_from_catalog(catalog(configured("customers")))).write(messages))
    rows = store.query("SELECT id, data FROM stripe_customers ORDER BY id")
    assert [orjson.loads(r["data"])["name"] for r in rows] == ["new", "b"]


def test_given_a_tombstone_then_the_object_is_deleted_and_health_sees_it_gone(store: SqliteStore) -> None:
    engine = FakeEngine()
    messages = [
        record("subscriptions", subscription("sub_1", "cus_1", amount=700)),
        record("subscriptions", subscription("sub_2", "cus_1", amount=300)),
        record("subscriptions", tombstone("sub_2", "subscription", T0 + 5, customer="cus_1")),
    ]
    list(make_writer(store, engine=engine).write(messages))
    assert store.query("SELECT id, deleted FROM stripe_subscriptions ORDER BY id") == [
        {"id": "sub_1", "deleted": 0},
        {"id": "sub_2", "deleted": 1},
    ]
    assert store.query("SELECT mrr FROM perly_customer_health WHERE customer_id = 'cus_1'") == [{"mrr": 700}]


def test_given_overwrite_then_the_live_table_keeps_its_rows_until_the_stream_completes(
    store: SqliteStore,
) -> None:
    store.ensure_schema()
    store.upsert_records("prices", [{"id": "price_old", "updated": 1}])
    plans = plans_from_catalog(catalog(configured("prices", DestinationSyncMode.overwrite)))
    live_at_states = []
    messages = [
        record("prices", {"id": "price_new_1", "updated": 2}),
        stream_state("prices", 1),
        record("prices", {"id": "price_new_2", "updated": 2}),
        stream_state("prices", 2),
        status("prices", AirbyteStreamStatus.COMPLETE),
    ]
    for out in make_writer(store, plans).write(messages):
        if out.type == Type.STATE:
            live_at_states.append(ids(store, "prices"))
    assert live_at_states == [["price_old"], ["price_old"]]
    assert ids(store, "prices") == ["price_new_1", "price_new_2"]


def test_given_overwrite_and_an_incomplete_stream_then_the_old_table_stays(store: SqliteStore) -> None:
    store.ensure_schema()
    store.upsert_records("prices", [{"id": "price_old", "updated": 1}])
    plans = plans_from_catalog(catalog(configured("prices", DestinationSyncMode.overwrite)))
    messages = [
        status("prices", AirbyteStreamStatus.STARTED),
        record("prices", {"id": "price_new", "updated": 2}),
        status("prices", AirbyteStreamStatus.INCOMPLETE),
    ]
    list(make_writer(store, plans).write(messages))
    assert ids(store, "prices") == ["price_old"]


def test_given_overwrite_without_stream_statuses_then_the_end_of_input_completes_it(
    store: SqliteStore,
) -> None:
    store.ensure_schema()
    store.upsert_records("products", [{"id": "prod_old", "updated": 1}])
    plans = plans_from_catalog(catalog(configured("products", DestinationSyncMode.overwrite)))
    list(make_writer(store, plans).write([record("products", {"id": "prod_new", "updated": 1})]))
    assert ids(store, "products") == ["prod_new"]


def test_given_a_truncate_refresh_then_older_generations_are_replaced_only_at_completion(
    store: SqliteStore,
) -> None:
    store.ensure_schema()
    store.upsert_records("coupons", [{"id": "co_gen1", "updated": 1}], generation_id=1)
    plans = plans_from_catalog(catalog(configured("coupons", generation_id=2, minimum_generation_id=2)))
    during = []
    messages = [record("coupons", {"id": "co_gen2", "updated": 1}), stream_state("coupons", 1)]
    for out in make_writer(store, plans).write(messages):
        if out.type == Type.STATE:
            during.append(ids(store, "coupons"))
    assert during == [["co_gen1"]]
    assert store.query("SELECT id, generation_id FROM stripe_coupons") == [
        {"id": "co_gen2", "generation_id": 2}
    ]


def test_given_a_refresh_that_retains_then_older_generations_stay(store: SqliteStore) -> None:
    store.ensure_schema()
    store.upsert_records("coupons", [{"id": "co_gen1", "updated": 1}], generation_id=1)
    plans = plans_from_catalog(catalog(configured("coupons", generation_id=2, minimum_generation_id=0)))
    list(make_writer(store, plans).write([record("coupons", {"id": "co_gen2", "updated": 1})]))
    assert ids(store, "coupons") == ["co_gen1", "co_gen2"]


def test_given_new_fields_then_they_are_stored(store: SqliteStore) -> None:
    plans = plans_from_catalog(catalog(configured("customers")))
    list(
        make_writer(store, plans).write([record("customers", customer("cus_1", brand_new={"nested": True}))])
    )
    assert orjson.loads(store.query("SELECT data FROM stripe_customers")[0]["data"])["brand_new"] == {
        "nested": True
    }


def test_given_a_stream_the_catalog_does_not_configure_then_its_records_are_skipped_and_named(
    store: SqliteStore,
) -> None:
    plans = plans_from_catalog(catalog(configured("customers", DestinationSyncMode.overwrite)))
    writer = make_writer(store, plans)
    messages = [
        record("customers", customer("cus_1")),
        record("customers_stage", customer("cus_evil")),  # its table is the customers stage table
        record("payouts", {"id": "po_1", "amount": 5, "updated": 3}),
        stream_state("customers", 1),
        status("customers", AirbyteStreamStatus.COMPLETE),
    ]
    output = list(writer.write(messages))
    errors = [m.log.message for m in output if m.type == Type.LOG and m.log.level == Level.ERROR]
    assert errors == [
        "skipped record 'cus_evil' of stream 'customers_stage' at line 2 of the input: "
        "the configured catalog has no such stream",
        "skipped record 'po_1' of stream 'payouts' at line 3 of the input: "
        "the configured catalog has no such stream",
    ]
    assert writer.stats.malformed == 2
    assert len(states_of(output)) == 1
    assert ids(store, "customers") == ["cus_1"]
    assert ids(store, "payouts") == []


def test_given_a_catalog_whose_streams_share_a_table_then_it_is_refused() -> None:
    with pytest.raises(
        ValueError, match="'customers' and 'customers_stage' would share the table stripe_customers_stage"
    ):
        plans_from_catalog(catalog(configured("customers"), configured("customers_stage")))
    with pytest.raises(
        ValueError, match="'customers_stage' and 'customers' would share the table stripe_customers_stage"
    ):
        plans_from_catalog(catalog(configured("customers_stage"), configured("customers")))
    assert set(plans_from_catalog(catalog(configured("customers"), configured("customers")))) == {"customers"}


def test_given_malformed_records_then_they_are_logged_counted_and_skipped(store: SqliteStore) -> None:
    writer = make_writer(store)
    messages = [
        record("customers", ["not", "an", "object"]),
        record("customers", {"email": "no-id@x.io"}),
        record("customers", customer("cus_1")),
        stream_state("customers", 1),
    ]
    output = list(writer.write(messages))
    errors = [m.log.message for m in output if m.type == Type.LOG and m.log.level == Level.ERROR]
    assert len(errors) == 2
    assert all("customers" in e for e in errors)
    assert writer.stats.malformed == 2
    assert len(states_of(output)) == 1
    assert ids(store, "customers") == ["cus_1"]


def test_given_small_buffer_bounds_then_buffers_never_grow_past_them(store: SqliteStore) -> None:
    limits = WriterLimits(max_records_per_stream=5, max_bytes_per_stream=10**9, max_bytes_total=2_000)
    writer = make_writer(store, limits=limits)
    largest: dict[str, Any] = {"records": 0, "bytes": 0}

    def messages() -> Iterator[AirbyteMessage]:
        for n in range(200):
            stream = ("customers", "invoices", "charges")[n % 3]
            yield record(
                stream, {"id": f"obj_{n}", "updated": n, "customer": f"cus_{n % 7}", "pad": "x" * 50}
            )
            largest["records"] = max([largest["records"], *(len(b.rows) for b in writer.buffers.values())])
            largest["bytes"] = max(largest["bytes"], writer.total_bytes)

    list(writer.write(messages()))
    assert largest["records"] < 5
    assert largest["bytes"] < 2_000
    total = sum(len(ids(store, s)) for s in ("customers", "invoices", "charges"))
    assert total == 200


def test_given_a_sync_then_touched_and_time_sensitive_customers_are_recomputed_as_of_the_clock(
    store: SqliteStore,
) -> None:
    store.ensure_schema()
    store.upsert_records(
        "invoices", [invoice("in_old", "cus_waiting", status="open")]
    )  # from an earlier sync
    store.upsert_records("customers", [customer("cus_quiet")])
    engine = FakeEngine()
    messages = [record("subscriptions", subscription("sub_1", "cus_new", amount=2500)), stream_state("x", 1)]
    list(make_writer(store, engine=engine).write(messages))

    assert {c for c, _ in engine.calls} == {"cus_new", "cus_waiting"}
    assert {when for _, when in engine.calls} == {AS_OF}
    rows = store.query(
        "SELECT customer_id, mrr, payment_risk FROM perly_customer_health ORDER BY customer_id"
    )
    assert rows == [
        {"customer_id": "cus_new", "mrr": 2500, "payment_risk": "none"},
        {"customer_id": "cus_waiting", "mrr": 0, "payment_risk": "low"},
    ]
    assert store.dirty_customers() == set()


def test_given_the_engine_fails_for_one_customer_then_the_others_are_saved_and_it_stays_pending(
    store: SqliteStore,
) -> None:
    engine = FakeEngine()
    engine.fail_for = {"cus_bad"}
    messages = [record("customers", customer("cus_bad")), record("customers", customer("cus_good"))]
    writer = make_writer(store, engine=engine)
    list(writer.write(messages))
    assert [r["customer_id"] for r in store.query("SELECT customer_id FROM perly_customer_health")] == [
        "cus_good"
    ]
    assert store.dirty_customers() == {"cus_bad"}
    assert writer.stats.refresh_failures == 1


def test_given_a_crash_before_recompute_then_the_next_sync_recomputes_those_customers(
    store: SqliteStore,
) -> None:
    store.ensure_schema()
    store.upsert_records("subscriptions", [subscription("sub_1", "cus_1", amount=900)])
    store.mark_dirty(["cus_1"])  # what a sync that died after its commit leaves behind
    engine = FakeEngine()
    list(make_writer(store, engine=engine).write([]))
    assert store.query("SELECT mrr FROM perly_customer_health") == [{"mrr": 900}]


def test_given_append_dedup_from_pyairbyte_then_the_latest_version_per_id_is_kept(store: SqliteStore) -> None:
    plans = plans_from_catalog(catalog(configured("invoices", DestinationSyncMode.append_dedup, 0, 0)))
    assert not plans["invoices"].staged
    messages = [
        record("invoices", invoice("in_1", "cus_1", updated=T0, status="open")),
        record("invoices", invoice("in_1", "cus_1", updated=T0 + 60, status="paid")),
        record("invoices", invoice("in_1", "cus_1", updated=T0 + 30, status="open")),
    ]
    list(make_writer(store, plans).write(messages))
    assert store.query("SELECT id, status FROM stripe_invoices") == [{"id": "in_1", "status": "paid"}]


def test_given_a_sync_on_either_backend_then_states_staging_dedup_and_health_agree(
    store_factory: StoreFactory,
) -> None:
    store = store_factory.open()
    store.ensure_schema()
    store.upsert_records("prices", [{"id": "price_old", "updated": 1}])
    plans = plans_from_catalog(
        catalog(configured("prices", DestinationSyncMode.overwrite), configured("subscriptions"))
    )
    messages = [
        record("prices", {"id": "price_new", "updated": 2}),
        record("subscriptions", subscription("sub_1", "cus_1", updated=T0 + 9, amount=4000)),
        stream_state("prices", 1),
        record("subscriptions", subscription("sub_1", "cus_1", updated=T0 + 1, amount=1)),  # stale version
        record("subscriptions", subscription("sub_2", "cus_2", amount=100)),
        record("subscriptions", tombstone("sub_2", "subscription", T0 + 3, customer="cus_2")),
        stream_state("subscriptions", 2),
        status("prices", AirbyteStreamStatus.COMPLETE),
    ]
    seen = []
    for out in make_writer(store, plans).write(messages):
        if out.type == Type.STATE:
            seen.append((ids(store, "prices"), ids(store, "subscriptions")))
    assert seen == [(["price_old"], []), (["price_old"], ["sub_1", "sub_2"])]
    assert ids(store, "prices") == ["price_new"]
    health = store.query("SELECT customer_id, mrr FROM perly_customer_health ORDER BY customer_id")
    assert health == [{"customer_id": "cus_1", "mrr": 4000}, {"customer_id": "cus_2", "mrr": 0}]


@pytest.mark.postgres
def test_given_a_sync_on_postgres_then_health_reads_the_bundles_through_the_indexes(tmp_path: Path) -> None:
    factory = StoreFactory("postgres", tmp_path)
    try:
        store = factory.open()
        messages = [record("invoices", invoice(f"in_{n:04}", f"cus_{n:04}")) for n in range(2000)]
        messages.append(stream_state("invoices", 1))
        ingestor = Ingestor(store, HealthConfig(), evaluate=FakeEngine(), customer_ids=customer_ids)
        plans = plans_from_catalog(catalog(configured("invoices")))
        plan_at_refresh: list[str] = []
        refresh = ingestor.refresh_pending

        def explained(*args: Any) -> Any:
            chunk = [f"cus_{n:04}" for n in range(0, 2000, 100)]  # 1%, as a chunk of a large account
            marks = ", ".join("?" * len(chunk))
            rows = store.query(
                f"EXPLAIN SELECT created, id, customer_id, data FROM stripe_invoices"
                f" WHERE customer_id IN ({marks}) AND deleted = 0",
                chunk,
            )
            plan_at_refresh.append(" ".join(str(row["QUERY PLAN"]) for row in rows))
            return refresh(*args)

        ingestor.refresh_pending = explained  # type: ignore[method-assign]
        list(Writer(ingestor, plans, as_of=lambda: AS_OF).write(messages))

        # Fresh tables have no statistics until ANALYZE; without them PostgreSQL scans whole tables.
        assert "Seq Scan" not in plan_at_refresh[0]
        assert "stripe_invoices_customer_idx" in plan_at_refresh[0]
        # The sync waits for that ANALYZE: it samples a few thousand rows, not the default 30,000
        # (a histogram of at most 11 bounds, not 101).
        bounds = store.query(
            "SELECT array_length(histogram_bounds, 1) AS n FROM pg_stats"
            " WHERE schemaname = current_schema() AND tablename = 'stripe_invoices' AND attname = 'id'"
        )
        assert bounds
        assert 2 <= bounds[0]["n"] <= 11
    finally:
        factory.cleanup()


class ReadAheadNoting(ReadAhead):
    """ReadAhead that notes, in `events`, each message as the writer takes it."""

    def __init__(self, messages: list[AirbyteMessage], events: list[tuple[str, str]]) -> None:
        super().__init__(messages)
        self.events = events

    def __iter__(self) -> Iterator[AirbyteMessage]:
        for message in self.messages:
            if message.type == Type.RECORD:
                self.events.append(("read", str(message.record.data["id"])))  # type: ignore[union-attr]
            yield message


def _committed_customers(schema: str) -> list[str]:
    """The customers another connection sees: only what is committed."""
    import psycopg

    from integration_tests.postgres import postgres_dsn

    with psycopg.connect(postgres_dsn(), autocommit=True) as other:
        rows = other.execute(f'SELECT id FROM "{schema}".stripe_customers ORDER BY id').fetchall()
    return [str(row[0]) for row in rows]


@pytest.mark.postgres
def test_on_postgres_the_writer_reads_on_while_a_commit_is_on_its_way_and_echoes_states_once_committed(
    postgres_factory: StoreFactory,
) -> None:
    store = postgres_factory.open()
    store.ensure_schema()
    store.ensure_stream_table("customers")
    messages: list[AirbyteMessage] = []
    for n in range(1, 5):
        messages += [record("customers", customer(f"cus_{n}")), stream_state("customers", n)]
    events: list[tuple[str, str]] = []

    for out in make_writer(store).write(ReadAheadNoting(messages, events)):
        if out.type == Type.STATE:
            n = out.state.stream.stream_state.updated  # type: ignore[union-attr]
            events.append(("echo", str(n)))
            # Echoed only once the records it covers are committed (seen from another connection).
            assert {f"cus_{k}" for k in range(1, n + 1)} <= set(_committed_customers(postgres_factory.schema))

    # Each state's flush was sent, and the next record read, before its commit was confirmed.
    assert events.index(("read", "cus_2")) < events.index(("echo", "1"))
    assert [e for e in events if e[0] == "echo"] == [("echo", str(n)) for n in range(1, 5)]


# When the store refuses the record cus_bad: as it is inserted, or only at its commit.
REFUSED_AT = {
    "insert": "TRIGGER refuse_bad BEFORE INSERT ON {table}",
    "commit": "CONSTRAINT TRIGGER refuse_bad AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED",
}


def store_refusing_cus_bad(postgres_factory: StoreFactory, when: str) -> Store:
    """A PostgreSQL store whose customers table refuses the record cus_bad ('disk full')."""
    store = postgres_factory.open()
    store.ensure_schema()
    table = store.ensure_stream_table("customers")
    store.execute(
        "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
    )
    store.execute(
        f"CREATE {REFUSED_AT[when].format(table=table)}"
        " FOR EACH ROW WHEN (NEW.id = 'cus_bad') EXECUTE FUNCTION refuse_bad()"
    )
    return store


def acknowledged_until_refused(writer: Writer, messages: list[AirbyteMessage]) -> list[int]:
    """The states (their cursors) the writer echoed before the refusal of cus_bad stopped it."""
    import psycopg

    acknowledged: list[int] = []

    def run() -> None:
        for out in writer.write(ReadAhead(messages)):
            if out.type == Type.STATE:
                acknowledged.append(out.state.stream.stream_state.updated)  # type: ignore[union-attr]

    with pytest.raises(psycopg.errors.RaiseException, match="disk full"):
        run()
    return acknowledged


@pytest.mark.postgres
def test_on_postgres_a_commit_failing_on_its_way_raises_and_its_state_is_never_acknowledged(
    postgres_factory: StoreFactory,
) -> None:
    store = store_refusing_cus_bad(postgres_factory, "insert")
    messages = [record("customers", customer("cus_1")), stream_state("customers", 1)]
    messages += [record("customers", customer("cus_bad")), stream_state("customers", 2)]
    messages += [record("customers", customer("cus_3")), stream_state("customers", 3)]

    acknowledged = acknowledged_until_refused(make_writer(store), messages)

    # State 1's flush is committed; whether it is echoed before the next flush's error comes back
    # depends on when the server answers (it is safe either way: unechoed, cus_1 is sent again).
    assert acknowledged in ([], [1])
    assert _committed_customers(postgres_factory.schema) == ["cus_1"]


@pytest.mark.postgres
def test_on_postgres_a_state_right_after_a_full_buffers_flush_waits_for_that_commit(
    postgres_factory: StoreFactory,
) -> None:
    """The buffer fills and is sent; the state that follows covers no buffered record, but it covers
    the flush still on its way, whose commit fails: that state is never acknowledged."""
    store = store_refusing_cus_bad(postgres_factory, "commit")
    messages = [record("customers", customer("cus_1")), record("customers", customer("cus_bad"))]
    messages += [stream_state("customers", 1), record("customers", customer("cus_3"))]
    writer = make_writer(store, limits=WriterLimits(max_records_per_stream=2))  # full at cus_bad

    acknowledged = acknowledged_until_refused(writer, messages)

    assert acknowledged == []
    assert _committed_customers(postgres_factory.schema) == []


def test_given_overwrite_without_statuses_and_a_silent_stream_then_its_table_is_kept(
    store: SqliteStore,
) -> None:
    store.ensure_schema()
    store.upsert_records("products", [{"id": "prod_old", "updated": 1}])
    plans = plans_from_catalog(
        catalog(configured("products", DestinationSyncMode.overwrite), configured("prices"))
    )
    list(make_writer(store, plans).write([record("prices", {"id": "price_1", "updated": 1})]))
    assert ids(store, "products") == ["prod_old"]


def test_given_overwrite_and_a_complete_stream_with_no_records_then_the_table_is_emptied(
    store: SqliteStore,
) -> None:
    store.ensure_schema()
    store.upsert_records("products", [{"id": "prod_old", "updated": 1}])
    plans = plans_from_catalog(catalog(configured("products", DestinationSyncMode.overwrite)))
    list(make_writer(store, plans).write([status("products", AirbyteStreamStatus.COMPLETE)]))
    assert ids(store, "products") == []


def test_given_a_long_sync_then_touched_customers_are_recomputed_at_a_state_once_the_interval_passed(
    store: SqliteStore,
) -> None:
    clock = {"now": 0.0}
    engine = FakeEngine()
    ingestor = Ingestor(store, HealthConfig(), evaluate=engine, customer_ids=customer_ids)
    writer = Writer(
        ingestor,
        every_stream(),
        as_of=lambda: AS_OF,
        limits=WriterLimits(refresh_interval_s=60),
        monotonic=lambda: clock["now"],
    )
    recomputed_at_states = []

    def messages() -> Iterator[AirbyteMessage]:
        yield record("customers", customer("cus_1"))
        yield stream_state("customers", 1)  # too soon: no recompute yet
        recomputed_at_states.append(len(engine.calls))
        clock["now"] = 61.0
        yield record("customers", customer("cus_2"))
        yield stream_state("customers", 2)
        recomputed_at_states.append(len(engine.calls))

    list(writer.write(messages()))
    assert recomputed_at_states == [0, 2]


def as_lines(messages: list[AirbyteMessage]) -> list[bytes]:
    """The messages as the platform pipes them to stdin."""
    return [orjson.dumps(AirbyteMessageSerializer.dump(m)) for m in messages]


def test_given_stdin_lines_then_the_fast_parser_and_the_reader_process_store_and_acknowledge_like_the_cdk(
    tmp_path: Path,
) -> None:
    messages = [
        record("customers", customer("cus_1")),
        record("subscriptions", subscription("sub_1", "cus_1", amount=1200)),
        record("subscriptions", subscription("sub_1", "cus_1", updated=T0 - 10, amount=900)),  # older
        stream_state("subscriptions", 2),
        record("invoices", {"id": 42, "customer": "cus_1", "updated": T0}),  # integer id kept as text
        record("invoices", {"customer": "cus_1", "updated": T0}),  # no id: skipped and reported
        status("invoices", AirbyteStreamStatus.COMPLETE),
        global_state(3),
    ]
    outputs = {}
    for name in ("cdk", "fast", "reader process"):
        opened = SqliteStore(tmp_path / f"{name}.db")
        writer = make_writer(opened)
        if name == "cdk":
            stream: Iterable[InputMessage] = messages
        elif name == "fast":
            stream = parse_input_lines(as_lines(messages))
        else:
            stream = read_in_helper(as_lines(messages), writer.preparer)
        out = list(writer.write(stream))
        outputs[name] = (
            [AirbyteMessageSerializer.dump(m) for m in out if m.type == Type.STATE],
            [m.log.message for m in out if m.type == Type.LOG and m.log.level == Level.ERROR],
            opened.query("SELECT id, updated, customer_id, data FROM stripe_subscriptions"),
            ids(opened, "invoices"),
            opened.query("SELECT customer_id, mrr FROM perly_customer_health"),
        )
        opened.close()
    assert outputs["fast"] == outputs["cdk"]
    assert outputs["reader process"] == outputs["cdk"]
    states, errors, subscriptions, invoices, health = outputs["fast"]
    assert len(states) == 2
    assert len(errors) == 1
    assert [
        (s["id"], orjson.loads(s["data"])["items"]["data"][0]["price"]["unit_amount"]) for s in subscriptions
    ] == [("sub_1", 1200)]
    assert invoices == ["42"]
    assert health == [{"customer_id": "cus_1", "mrr": 1200}]


def test_given_a_line_that_is_not_json_then_it_is_skipped_without_echoing_it(store: SqliteStore) -> None:
    lines = [
        b'{"type": "RECORD", "record": {"stream": "customers", "data": {"id": "cus_1"}',
        b"oops sk_live_x",
    ]
    output = list(make_writer(store).write(parse_input_lines(lines)))
    logged = [m.log.message for m in output if m.type == Type.LOG and m.log.level == Level.WARN]
    assert logged == [
        "ignoring line 1 of the input: not an Airbyte message",
        "ignoring line 2 of the input: not an Airbyte message",
    ]
    assert not any("sk_live_x" in message or "cus_1" in message for message in logged)
    assert ids(store, "customers") == []
    parsed = list(parse_input_lines([b'{"type": "LOG", "log": {"level": "INFO", "message": "hi"}}']))
    assert [m.type for m in parsed] == [Type.LOG]  # anything but a record goes through the CDK models


# Hostile input between good records and states: what each line becomes, and the messages logged.
BAD_INPUT = [
    as_lines([record("customers", customer("cus_1"))])[0],
    b'{"foo": 1}',
    b"[1, 2]",
    as_lines([stream_state("customers", 1)])[0],
    as_lines([record("customers", customer("cus_2", name="Jos"))])[0].replace(b"Jos", b"Jos\xe9"),
    as_lines([record("customers", customer("cus_3", updated=2**63))])[0],
    as_lines([record("customers", customer("cus_4", created=1))])[0].replace(
        b'"created":1', b'"created":1' + b"0" * 22
    ),
    b"oops sk_live_x",
    b'{"type": "RECORD", "record": {"stream": 5}}',
    as_lines([record("customers", customer("cus_5"))])[0],
    as_lines([stream_state("customers", 2)])[0],
    as_lines([record("customers_stage", customer("cus_6"))])[0],
    # What Python's json module writes for a lone surrogate and for NaN; orjson reads neither.
    as_lines([record("customers", customer("cus_7", name="Jos"))])[0].replace(b"Jos", b"Jos\\ud800"),
    as_lines([record("customers", customer("cus_8", created=1))])[0].replace(
        b'"created":1', b'"created":NaN'
    ),
]
BAD_INPUT_LOGS = [
    ("WARN", "ignoring line 2 of the input: not an Airbyte message"),
    ("WARN", "ignoring line 3 of the input: not an Airbyte message"),
    (
        "ERROR",
        "skipped record 'cus_2' of stream 'customers' at line 5 of the input: bytes that are not valid UTF-8",
    ),
    (
        "ERROR",
        "skipped record 'cus_3' of stream 'customers' at line 6 of the input: "
        "`updated` is beyond a 64-bit integer",
    ),
    (
        "ERROR",
        "skipped record 'cus_4' of stream 'customers' at line 7 of the input: "
        "`created` is beyond a 64-bit integer",
    ),
    ("WARN", "ignoring line 8 of the input: not an Airbyte message"),
    ("ERROR", "skipped a malformed RECORD at line 9 of the input"),
    (
        "ERROR",
        "skipped record 'cus_6' of stream 'customers_stage' at line 12 of the input: "
        "the configured catalog has no such stream",
    ),
    *(
        (
            "ERROR",
            f"skipped record '{customer_id}' of stream 'customers' at line {line} of the input: "
            "values JSON cannot carry (a lone UTF-16 surrogate, NaN or a number out of range)",
        )
        for customer_id, line in (("cus_7", 13), ("cus_8", 14))
    ),
]


@pytest.mark.parametrize("path", ["in process", "reader process"])
def test_given_hostile_lines_then_each_is_skipped_and_named_and_the_rest_is_stored_and_acknowledged(
    tmp_path: Path, path: str
) -> None:
    with pytest.raises(UnicodeDecodeError):  # the line really holds a byte that is not UTF-8
        BAD_INPUT[4].decode()
    store = SqliteStore(tmp_path / "perly.db")
    writer = make_writer(store)
    stream = (
        parse_input_lines(BAD_INPUT) if path == "in process" else read_in_helper(BAD_INPUT, writer.preparer)
    )

    output = list(writer.write(stream))

    logs = [(m.log.level.value, m.log.message) for m in output if m.type == Type.LOG]  # type: ignore[union-attr]
    assert logs[:-1] == BAD_INPUT_LOGS
    assert "7 records skipped" in logs[-1][1]
    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [1, 2]  # type: ignore[union-attr]
    assert ids(store, "customers") == ["cus_1", "cus_5"]
    assert writer.stats.malformed == 7
    assert not any("sk_live_x" in message for _, message in logs)
    store.close()
