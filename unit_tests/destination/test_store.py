"""The store's promises, run on SQLite and on PostgreSQL alike (the `store` fixture is parametrized)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from destination_perly.health.model import (
    CustomerEvaluation,
    HealthConfig,
    MrrMovement,
    MrrSnapshot,
    PlanChange,
)
from destination_perly.store.base import Store, iso, table_for_stream
from destination_perly.store.sqlite import SqliteStore
from unit_tests.destination.builders import (
    AS_OF,
    T0,
    FakeEngine,
    customer,
    invoice,
    quiet_health,
    subscription,
    tombstone,
)
from unit_tests.destination.concurrent_writer import write_batches
from unit_tests.destination.conftest import StoreFactory


def stored(store: Store, stream: str, oid: str) -> dict:
    rows = store.query(f"SELECT * FROM {table_for_stream(stream)} WHERE id = ?", (oid,))
    assert len(rows) == 1
    return rows[0]


def test_given_versions_out_of_order_when_upserted_then_the_newer_updated_is_kept(store: Store) -> None:
    store.upsert_records("customers", [customer("cus_1", updated=T0 + 10, name="new")])
    store.upsert_records("customers", [customer("cus_1", updated=T0 + 5, name="old")])

    row = stored(store, "customers", "cus_1")
    assert row["updated"] == T0 + 10
    assert orjson.loads(row["data"])["name"] == "new"


def test_given_equal_updated_when_upserted_then_the_later_arrival_wins(store: Store) -> None:
    store.upsert_records("customers", [customer("cus_1", name="first"), customer("cus_1", name="second")])
    assert orjson.loads(stored(store, "customers", "cus_1")["data"])["name"] == "second"
    store.upsert_records("customers", [customer("cus_1", name="third")])
    assert orjson.loads(stored(store, "customers", "cus_1")["data"])["name"] == "third"


def test_given_a_newer_tombstone_then_the_row_is_marked_deleted_and_keeps_its_last_object(
    store: Store,
) -> None:
    store.upsert_records("subscriptions", [subscription("sub_1", "cus_1", updated=T0)])
    store.upsert_records("subscriptions", [tombstone("sub_1", "subscription", T0 - 1)])
    assert stored(store, "subscriptions", "sub_1")["deleted"] == 0

    store.upsert_records("subscriptions", [tombstone("sub_1", "subscription", T0 + 1)])
    row = stored(store, "subscriptions", "sub_1")
    assert row["deleted"] == 1
    assert row["customer_id"] == "cus_1"
    assert orjson.loads(row["data"])["status"] == "active"


def test_given_columns_then_they_are_extracted_from_the_record(store: Store) -> None:
    store.upsert_records(
        "invoices",
        [invoice("in_1", "cus_9", status="open"), {"id": "in_2", "customer": {"id": "cus_8"}, "updated": 3}],
    )
    first, second = stored(store, "invoices", "in_1"), stored(store, "invoices", "in_2")
    assert (first["customer_id"], first["status"], first["created"], first["deleted"]) == (
        "cus_9",
        "open",
        T0,
        0,
    )
    assert second["customer_id"] == "cus_8"


def test_given_an_unknown_stream_with_an_odd_name_then_it_gets_its_own_safe_table(store: Store) -> None:
    store.upsert_records("credit-notes v2", [{"id": "cn_1", "updated": 1, "brand_new_field": {"x": [1, 2]}}])
    table = table_for_stream("credit-notes v2")
    assert table.startswith("stripe_credit_notes_v2_")
    assert table != table_for_stream("credit_notes_v2")
    rows = store.query(f"SELECT data FROM {table}")
    assert orjson.loads(rows[0]["data"])["brand_new_field"] == {"x": [1, 2]}


def test_given_an_error_inside_a_transaction_then_nothing_is_kept(store: Store) -> None:
    store.upsert_records("customers", [customer("cus_0")])

    def crash() -> None:
        with store.transaction():
            store.upsert_records("customers", [customer("cus_1")])
            store.mark_dirty(["cus_1"])
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        crash()
    assert [r["id"] for r in store.query(f"SELECT id FROM {table_for_stream('customers')}")] == ["cus_0"]
    assert store.dirty_customers() == set()


def test_given_a_stage_when_loading_then_the_live_table_is_untouched_until_the_swap(store: Store) -> None:
    store.upsert_records("prices", [{"id": "price_old", "updated": 1}, {"id": "price_kept", "updated": 1}])
    store.begin_stage("prices", generation_id=2)
    store.upsert_records(
        "prices", [{"id": "price_kept", "updated": 2}, {"id": "price_new", "updated": 2}], 2, True
    )

    live = {r["id"] for r in store.query(f"SELECT id FROM {table_for_stream('prices')}")}
    assert live == {"price_old", "price_kept"}

    store.swap_stage("prices")
    rows = store.query(f"SELECT id, generation_id FROM {table_for_stream('prices')} ORDER BY id")
    assert rows == [{"id": "price_kept", "generation_id": 2}, {"id": "price_new", "generation_id": 2}]


def test_given_a_stage_left_by_the_same_generation_then_a_resumed_load_keeps_it(store: Store) -> None:
    store.begin_stage("prices", generation_id=3)
    store.upsert_records("prices", [{"id": "price_a", "updated": 1}], 3, True)
    store.begin_stage("prices", generation_id=3)  # the retry of the same sync
    store.upsert_records("prices", [{"id": "price_b", "updated": 1}], 3, True)
    store.swap_stage("prices")
    assert {r["id"] for r in store.query(f"SELECT id FROM {table_for_stream('prices')}")} == {
        "price_a",
        "price_b",
    }

    store.begin_stage("prices", generation_id=4)
    store.upsert_records("prices", [{"id": "price_c", "updated": 1}], 4, True)
    store.begin_stage("prices", generation_id=5)  # a new generation starts afresh
    store.swap_stage("prices")
    assert store.query(f"SELECT id FROM {table_for_stream('prices')}") == []


def test_given_many_customers_then_each_bundle_holds_its_own_live_objects(
    store: Store,
) -> None:
    store.upsert_records(
        "customers", [customer("cus_1"), customer("cus_2"), tombstone("cus_3", "customer", T0)]
    )
    store.upsert_records(
        "subscriptions",
        [subscription("sub_1", "cus_1"), subscription("sub_2", "cus_2"), subscription("sub_3", "cus_1")],
    )
    store.upsert_records("subscriptions", [tombstone("sub_3", "subscription", T0 + 1, customer="cus_1")])
    store.upsert_records("invoices", [invoice("in_1", "cus_2")])
    store.upsert_records("coupons", [{"id": "co_1", "duration": "forever", "updated": 1}])

    bundles = store.load_bundles(["cus_1", "cus_2", "cus_3", "cus_unknown"])

    assert [s["id"] for s in bundles["cus_1"].subscriptions] == ["sub_1"]
    assert [s["id"] for s in bundles["cus_2"].subscriptions] == ["sub_2"]
    assert [i["id"] for i in bundles["cus_2"].invoices] == ["in_1"]
    assert (bundles["cus_1"].customer or {}).get("email") == "cus_1@x.io"
    assert bundles["cus_3"].customer == {"id": "cus_3", "object": "customer", "deleted": True, "updated": T0}
    assert bundles["cus_unknown"].customer is None
    assert set(bundles["cus_1"].coupons) == {"co_1"}
    assert store.load_bundle("cus_2").invoices == bundles["cus_2"].invoices
    # What a refresh reads: the same bundles, each parsed when asked (the same again if asked again).
    stored = store.load_stored_bundles(["cus_1", "cus_2", "cus_3", "cus_unknown"])
    assert {c: s.parsed() for c, s in stored.items()} == bundles
    assert {c: s.parsed() for c, s in stored.items()} == bundles


def test_a_saved_time_is_utc_to_the_second_whatever_its_zone_or_year() -> None:
    assert iso(datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)) == "2026-03-04T05:06:07Z"
    assert iso(datetime(2026, 3, 4, 1, 6, 7, tzinfo=timezone(timedelta(hours=-4)))) == "2026-03-04T05:06:07Z"
    assert iso(datetime.fromisoformat("2026-03-04T05:06:07+00:00")) == "2026-03-04T05:06:07Z"
    # Years before 1000 (absurd Stripe times) are written as they always were: not zero-padded.
    assert iso(datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)) == "999-12-31T23:59:59Z"
    assert iso(datetime(1000, 1, 1, tzinfo=UTC)) == "1000-01-01T00:00:00Z"
    assert iso(None) is None


def test_given_text_beyond_ascii_then_a_bundle_holds_it_as_written(store: Store) -> None:
    # Bundles are read as the stored UTF-8 bytes (not decoded to str first): every character survives.
    names = {"cus_1": "Zoë Ångström", "cus_2": "株式会社 Perly", "cus_3": 'emoji 🚀, quote " and \\'}
    store.upsert_records("customers", [{**customer(c), "name": name} for c, name in names.items()])
    store.upsert_records("invoices", [{**invoice("in_1", "cus_2"), "description": "Größe ½ 🚀"}])

    bundles = store.load_bundles(list(names))

    assert {c: (bundles[c].customer or {}).get("name") for c in names} == names
    assert [i["description"] for i in bundles["cus_2"].invoices] == ["Größe ½ 🚀"]


def test_given_charges_and_events_then_a_bundle_holds_the_failed_charges_and_customer_events_only(
    store: Store,
) -> None:
    charges = [
        {"id": "ch_ok", "object": "charge", "customer": "cus_1", "status": "succeeded", "created": T0},
        {"id": "ch_failed", "object": "charge", "customer": "cus_1", "status": "failed", "created": T0},
        {"id": "ch_pending", "object": "charge", "customer": "cus_1", "status": "pending", "created": T0},
    ]
    store.upsert_records("charges", [{**charge, "updated": T0} for charge in charges])
    kinds = ("customer.subscription.updated", "invoice.paid", "customer.deleted", "charge.failed")
    owned = {"id": "obj_1", "customer": "cus_1"}  # an event belongs to its object's customer
    events = [
        {"id": f"evt_{n}", "object": "event", "type": kind, "created": T0 + n, "data": {"object": owned}}
        for n, kind in enumerate(kinds)
    ]
    store.upsert_records("events", events)

    bundle = store.load_bundle("cus_1")

    assert [c["id"] for c in bundle.charges] == ["ch_failed"]
    assert [e["type"] for e in bundle.events] == ["customer.subscription.updated", "customer.deleted"]
    # Everything is still stored: the filter is only what the health rules are handed.
    assert len(store.query(f"SELECT id FROM {table_for_stream('events')}")) == 4


def test_given_a_store_from_before_the_type_column_then_ensure_schema_adds_and_fills_it(
    store: Store,
) -> None:
    table = table_for_stream("events")
    store.execute(
        f"CREATE TABLE {table} (id TEXT PRIMARY KEY, updated BIGINT NOT NULL, deleted BIGINT NOT NULL"
        " DEFAULT 0, customer_id TEXT, created BIGINT, status TEXT, data TEXT NOT NULL, generation_id BIGINT)"
    )
    for n, kind in enumerate(("customer.subscription.deleted", "invoice.created")):
        event = {"id": f"evt_{n}", "object": "event", "type": kind, "created": T0 + n}
        store.execute(
            f"INSERT INTO {table} (id, updated, customer_id, created, data) VALUES (?, ?, ?, ?, ?)",
            (event["id"], T0, "cus_1", T0 + n, orjson.dumps(event).decode()),
        )

    store.ensure_schema()
    store.ensure_schema()  # a second start finds the column and leaves it be

    assert [e["type"] for e in store.load_bundle("cus_1").events] == ["customer.subscription.deleted"]
    assert store.query(f"SELECT type FROM {table} ORDER BY id") == [
        {"type": "customer.subscription.deleted"},
        {"type": "invoice.created"},
    ]


def test_given_evaluations_then_health_is_upserted_and_movements_appended_once(store: Store) -> None:
    store.upsert_records("subscriptions", [subscription("sub_1", "cus_1", amount=1500)])
    engine = FakeEngine()
    for _ in range(2):  # recomputing twice must not duplicate the history
        evaluation = engine(store.load_bundle("cus_1"), HealthConfig(), AS_OF)
        store.save_results([evaluation], [("cus_1", evaluation.snapshot)])

    health = store.query("SELECT * FROM perly_customer_health")
    assert len(health) == 1
    assert health[0]["mrr"] == 1500
    assert orjson.loads(health[0]["mrr_by_currency"]) == {"usd": 1500}
    assert health[0]["flag_downgrade"] == 0
    assert health[0]["as_of"] == "2026-11-01T00:00:00Z"
    assert len(store.query("SELECT * FROM perly_mrr_movements WHERE customer_id = ?", ("cus_1",))) == 1
    snapshots = store.load_bundle("cus_1").snapshots
    assert [s.mrr_by_currency for s in snapshots] == [{"usd": 1500}, {"usd": 1500}]
    assert snapshots[0].at == AS_OF


def test_given_stored_history_when_saving_again_then_no_row_is_rewritten_and_bundles_carry_it(
    store: Store,
) -> None:
    # The first evaluation stored a movement and a plan change; a later one (a recompute that would
    # tell the past differently) only appends. The bundle hands the engine what is stored, and when.
    first = MrrMovement("cus_1", AS_OF - timedelta(days=9), "new", None, "usd", 0, 1500, 1500, "sub_1")
    change = PlanChange(
        "cus_1", "sub_1", AS_OF - timedelta(days=9), "upgrade", "p_a", "p_b", "A", "B", "evt_1"
    )
    later = MrrMovement("cus_1", AS_OF, "expansion", None, "usd", 1500, 2000, 500, "as_of")
    store.save_results([evaluation_of("cus_1", AS_OF - timedelta(days=1), [first], [change])], [])
    store.save_results([evaluation_of("cus_1", AS_OF, [later], [])], [])

    history = store.load_bundle("cus_1").history
    assert history is not None
    assert history.movements == (first, later)
    assert history.plan_changes == (change,)
    assert history.until == AS_OF
    assert store.load_bundle("cus_2").history is None  # never evaluated: nothing stored


def test_given_history_stored_by_an_earlier_version_then_it_is_kept_loaded_in_order_and_appended_to(
    store_factory: StoreFactory,
) -> None:
    # An earlier version created the history tables from the dataclasses alone (no insertion-order
    # column on PostgreSQL) and stored a whole recomputed history; nothing of it may be lost.
    store = store_factory.open()
    texts = ("customer_id", "at", "kind", "churn_type", "currency")
    numbers = ("mrr_before", "mrr_after", "delta")
    columns = ", ".join(
        [*(f"{n} TEXT" for n in texts), *(f"{n} {store.int_type}" for n in numbers), "cause TEXT"]
    )
    store.execute(f"CREATE TABLE perly_mrr_movements ({columns})")
    old = [
        ("cus_1", "2026-10-01T00:00:00Z", "new", None, "usd", 0, 1500, 1500, "sub_1"),
        ("cus_1", "2026-10-02T00:00:00Z", "expansion", None, "usd", 1500, 2000, 500, "sub_1"),
    ]
    for row in reversed(old):
        store.execute("INSERT INTO perly_mrr_movements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    store.ensure_schema()

    later = MrrMovement("cus_1", AS_OF, "contraction", None, "usd", 2000, 1000, -1000, "as_of")
    store.save_results([evaluation_of("cus_1", AS_OF, [later], [])], [])

    history = store.load_bundle("cus_1").history
    assert history is not None
    assert [(m.kind, m.delta) for m in history.movements] == [
        ("new", 1500),
        ("expansion", 500),
        ("contraction", -1000),
    ]


def evaluation_of(
    customer_id: str, as_of: datetime, movements: list[MrrMovement], plan_changes: list[PlanChange]
) -> CustomerEvaluation:
    health = quiet_health(customer_id, as_of)
    snapshot = MrrSnapshot(at=as_of, mrr_by_currency={}, cause="test")
    return CustomerEvaluation(health, movements, plan_changes, snapshot)


def test_given_snapshots_then_bundles_list_them_oldest_first(store: Store) -> None:
    later = MrrSnapshot(at=AS_OF, mrr_by_currency={"eur": 5}, cause="evt_2")
    earlier = MrrSnapshot(at=AS_OF - timedelta(days=3), mrr_by_currency={"eur": 9}, cause="evt_1")
    store.save_results([], [("cus_1", later), ("cus_1", earlier)])
    assert [s.cause for s in store.load_bundle("cus_1").snapshots] == ["evt_1", "evt_2"]


def test_given_open_invoices_trials_and_failures_then_those_are_marked_time_sensitive(
    store: Store,
) -> None:
    now = int(AS_OF.timestamp())
    store.upsert_records(
        "invoices", [invoice("in_1", "cus_open", status="open"), invoice("in_2", "cus_paid")]
    )
    store.upsert_records(
        "subscriptions",
        [subscription("sub_1", "cus_trial", status="trialing"), subscription("sub_2", "cus_active")],
    )
    store.upsert_records(
        "charges",
        [
            {
                "id": "ch_1",
                "customer": "cus_failed",
                "status": "failed",
                "created": now - 86400,
                "updated": now,
            },
            {
                "id": "ch_2",
                "customer": "cus_old",
                "status": "failed",
                "created": now - 200 * 86400,
                "updated": 1,
            },
        ],
    )
    store.mark_dirty(["cus_failed"])  # already dirty: marked again, not duplicated
    store.mark_time_sensitive(AS_OF)
    assert store.dirty_customers() == {"cus_open", "cus_trial", "cus_failed"}


def test_given_large_tables_then_time_sensitive_rows_are_found_by_partial_indexes_not_scans(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "perly.db")
    store.ensure_schema()
    for stream in ("invoices", "subscriptions", "charges"):
        store.ensure_stream_table(stream)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)

    store.mark_time_sensitive(AS_OF)

    store._conn.set_trace_callback(None)
    plans = {
        sql.split(" FROM ")[2].split()[0]: " ".join(
            str(row[3]) for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        )
        for sql in statements
        if sql.startswith("INSERT INTO perly_dirty_customers") and " stripe_" in sql
    }
    assert set(plans) == {"stripe_invoices", "stripe_subscriptions", "stripe_charges"}
    for table, plan in plans.items():
        assert f"USING INDEX {table}_clock_idx" in plan
        assert f"SCAN {table}" not in plan
    store.close()


def clock_indexes(store: Store) -> set[str]:
    """The valid clock indexes the store has, whichever the backend."""
    if isinstance(store, SqliteStore):
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%clock_idx'"
    else:
        sql = (
            "SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relname LIKE '%clock_idx' AND i.indisvalid"
        )
    return {str(row["name"]) for row in store.query(sql)}


def test_given_stream_tables_made_before_the_clock_indexes_when_the_store_opens_then_they_get_them(
    store_factory: StoreFactory,
) -> None:
    older = store_factory.open()
    older.ensure_schema()
    older.upsert_records("invoices", [invoice("in_open", "cus_open", status="open")])
    older.upsert_records("subscriptions", [subscription("sub_1", "cus_trial", status="trialing")])
    for stream in ("invoices", "subscriptions"):
        older.execute(f"DROP INDEX {table_for_stream(stream)}_clock_idx")
    assert clock_indexes(older) == set()

    reopened = store_factory.open()
    reopened.ensure_schema()
    reopened.ensure_schema()  # a second start finds them and leaves them be

    assert clock_indexes(reopened) == {"stripe_invoices_clock_idx", "stripe_subscriptions_clock_idx"}
    reopened.mark_time_sensitive(AS_OF)
    assert reopened.dirty_customers() == {"cus_open", "cus_trial"}


def bundle_indexes(store: Store) -> dict[str, str]:
    """The valid bundle indexes the store has and their definitions, whichever the backend."""
    if isinstance(store, SqliteStore):
        sql = "SELECT name, sql AS definition FROM sqlite_master WHERE name LIKE '%bundle_idx'"
    else:
        sql = (
            "SELECT c.relname AS name, pg_get_indexdef(c.oid) AS definition FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relname LIKE '%bundle_idx' AND i.indisvalid"
        )
    return {str(row["name"]): str(row["definition"]) for row in store.query(sql)}


def test_given_stream_tables_made_before_the_bundle_indexes_when_the_store_opens_then_they_get_them(
    store_factory: StoreFactory,
) -> None:
    older = store_factory.open()
    older.ensure_schema()
    older.upsert_records("charges", [{"id": "ch_1", "customer": "cus_1", "status": "failed", "updated": T0}])
    older.upsert_records(
        "events", [{"id": "evt_1", "type": "customer.updated", "created": T0, "updated": T0}]
    )
    assert set(bundle_indexes(older)) == {"stripe_charges_bundle_idx", "stripe_events_bundle_idx"}
    for stream in ("charges", "events"):
        older.execute(f"DROP INDEX {table_for_stream(stream)}_bundle_idx")
    assert bundle_indexes(older) == {}

    reopened = store_factory.open()
    reopened.ensure_schema()
    reopened.ensure_schema()  # a second start finds them and leaves them be

    found = bundle_indexes(reopened)
    assert set(found) == {"stripe_charges_bundle_idx", "stripe_events_bundle_idx"}
    assert "'failed'" in found["stripe_charges_bundle_idx"]
    assert "'customer.%'" in found["stripe_events_bundle_idx"]  # the LIKE pattern kept whole


def test_a_bundle_reads_the_failed_charges_and_customer_events_through_their_partial_indexes(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "perly.db")
    store.ensure_schema()
    for stream in ("subscriptions", "invoices", "charges", "events", "customers"):
        store.ensure_stream_table(stream)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)

    store.load_bundles(["cus_1", "cus_2"])

    store._conn.set_trace_callback(None)
    plans = {
        table: " ".join(str(row[3]) for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
        for sql in statements
        for table in ("stripe_charges", "stripe_events")
        if f"FROM {table} " in sql
    }
    assert plans == {
        "stripe_charges": "SEARCH stripe_charges USING INDEX stripe_charges_bundle_idx (customer_id=?)",
        "stripe_events": "SEARCH stripe_events USING INDEX stripe_events_bundle_idx (customer_id=?)",
    }
    store.close()


def test_given_the_dirty_ledger_then_marks_survive_until_cleared(store_factory: StoreFactory) -> None:
    first = store_factory.open()
    first.ensure_schema()
    first.mark_dirty(["cus_1", "cus_2", "cus_1"])
    second = store_factory.open()  # another process sees what was committed
    assert second.dirty_customers() == {"cus_1", "cus_2"}
    seen = second.dirty_marks(["cus_1", "cus_2"])
    first.mark_dirty(["cus_2"])  # written again while the first refresh was computing
    second.clear_dirty(seen)
    assert first.dirty_customers() == {"cus_2"}
    second.clear_dirty(second.dirty_marks(["cus_2"]))
    assert first.dirty_customers() == set()


def test_given_two_writers_on_one_store_then_the_newer_version_wins_whatever_the_commit_order(
    store_factory: StoreFactory,
) -> None:
    a, b = store_factory.open(), store_factory.open()
    a.ensure_schema()
    b.ensure_schema()
    with a.transaction():
        a.upsert_records("customers", [customer("cus_1", updated=T0 + 9, name="newer")])
    b.upsert_records("customers", [customer("cus_1", updated=T0 + 1, name="older")])
    assert orjson.loads(stored(a, "customers", "cus_1")["data"])["name"] == "newer"


def test_given_concurrent_writers_then_no_write_fails_and_all_rows_land(
    store_factory: StoreFactory,
) -> None:
    setup = store_factory.open()
    setup.ensure_schema()
    setup.upsert_records("customers", [customer("cus_0")])
    errors: list[BaseException] = []

    def write(prefix: str) -> None:
        try:
            store = store_factory.open()
            for batch in range(20):
                with store.transaction():
                    store.upsert_records("customers", [customer(f"{prefix}_{batch}_{i}") for i in range(25)])
                    store.mark_dirty([f"{prefix}_{batch}"])
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"cus_w{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (
        setup.query(f"SELECT COUNT(*) AS n FROM {table_for_stream('customers')}")[0]["n"] == 1 + 3 * 20 * 25
    )


def test_given_writers_on_the_same_customers_in_opposite_orders_then_none_deadlocks(
    store_factory: StoreFactory,
) -> None:
    """A sync and the webhook receiver may write the same objects at once, each in its own order."""
    setup = store_factory.open()
    setup.ensure_schema()
    ids = [f"cus_{n:02d}" for n in range(60)]
    errors: list[BaseException] = []

    def write(order: list[str]) -> None:
        try:
            store = store_factory.open()
            for round_ in range(15):
                with store.transaction():
                    store.upsert_records("customers", [customer(c, updated=T0 + round_) for c in order])
                    store.mark_dirty(order)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(order,)) for order in (ids, ids[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert setup.dirty_marks(ids) == dict.fromkeys(ids, 30)
    assert {stored(setup, "customers", c)["updated"] for c in ids} == {T0 + 14}


def test_given_awkward_text_and_empty_columns_then_rows_come_back_exactly(store: Store) -> None:
    """Rows travel in bulk (on PostgreSQL as binary arrays): quotes, backslashes, braces, commas,
    non-ASCII and missing values must arrive unchanged."""
    odd = 'a "quoted", {braced} \\ back\\slash\nnewline NULL \u00e9t\u00e9 \U0001f600 100%'
    records = [
        customer("cus_odd", name=odd, updated=T0),
        {"id": "ch_bare", "object": "charge", "updated": T0},  # no customer, status, type or created
        invoice("in_1", "cus_odd", status=odd),
    ]
    for stream, record in zip(("customers", "charges", "invoices"), records, strict=True):
        store.upsert_records(stream, [record])
    raw = stored(store, "customers", "cus_odd")["data"]
    assert isinstance(raw, str)  # text, as SQL's JSON functions read it (it travels as UTF-8 bytes)
    assert orjson.loads(raw) == records[0]
    bare = stored(store, "charges", "ch_bare")
    assert (bare["customer_id"], bare["status"], bare["type"], bare["created"]) == (None, None, None, None)
    assert stored(store, "invoices", "in_1")["status"] == odd


@pytest.mark.postgres
def test_on_postgres_values_of_another_type_than_their_column_still_arrive_as_before(tmp_path: Path) -> None:
    """Text and bigint columns go as binary arrays encoded by the store; values of other types (an
    integer for a text column, a float for a bigint one) are left to psycopg and the server's cast."""
    factory = StoreFactory("postgres", tmp_path)
    try:
        store = factory.open()
        store.create_table("CREATE TABLE IF NOT EXISTS mixed (label TEXT, amount BIGINT)")
        with store.transaction():
            store._insert_many("mixed", ("label", "amount"), [(7, 2.0), (None, 3.0)])
        assert store.query("SELECT label, amount FROM mixed ORDER BY amount") == [
            {"label": "7", "amount": 2},
            {"label": None, "amount": 3},
        ]
    finally:
        factory.cleanup()


def test_given_a_writable_store_then_the_probe_passes_and_leaves_nothing(store: Store) -> None:
    store.probe_writable()
    assert "perly_check_probe" not in store.tables()


def test_given_placeholders_and_percent_signs_then_query_works_on_both_backends(store: Store) -> None:
    store.upsert_records("customers", [customer("cus_1", email="a%b@x.io")])
    rows = store.query(
        f"SELECT id FROM {table_for_stream('customers')} WHERE data LIKE ? AND id = ?", ("%a%b@%", "cus_1")
    )
    assert rows == [{"id": "cus_1"}]


def test_given_sqlite_and_writer_processes_then_none_fails_on_a_lock(tmp_path: Path) -> None:
    """The webhook receiver writes from its own process while a sync runs."""
    path = str(tmp_path / "perly.db")
    main = SqliteStore(path)
    main.ensure_schema()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_batches, args=(path, f"cus_p{n}", 30)) for n in range(2)]
    for worker in workers:
        worker.start()
    batches = 0
    while batches < 30 or any(w.is_alive() for w in workers):  # this process writes all along too
        with main.transaction():
            rows = [{"id": f"ch_main_{batches}_{n}", "updated": 1} for n in range(200)]
            main.upsert_records("charges", rows)
        batches += 1
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert main.query("SELECT COUNT(*) AS n FROM stripe_charges")[0]["n"] == batches * 200 + 2 * 30 * 50
    main.close()


def test_given_objects_stored_in_any_order_then_bundles_list_them_oldest_first(store: Store) -> None:
    store.upsert_records(
        "invoices",
        [
            invoice("in_b", "cus_1", created=T0 + 20),
            invoice("in_c", "cus_1", created=T0 - 5),
            invoice("in_a", "cus_1", created=T0 + 20),
        ],
    )
    assert [i["id"] for i in store.load_bundle("cus_1").invoices] == ["in_c", "in_a", "in_b"]


def test_given_snapshots_at_the_same_instant_then_bundles_list_them_in_insertion_order(store: Store) -> None:
    # Webhooks arriving within one second: several snapshots share `at`; saved interleaved with
    # older ones, so the database must sort, and equal instants keep the order they were saved in.
    earlier_at = AS_OF - timedelta(days=1)
    saved = [(earlier_at if n % 2 else AS_OF, f"evt_{n:02d}") for n in range(60)]
    for n, (at, cause) in enumerate(saved):
        store.save_results([], [("cus_1", MrrSnapshot(at=at, mrr_by_currency={"usd": n}, cause=cause))])
    loaded = store.load_bundle("cus_1").snapshots
    expected = [cause for at, cause in saved if at == earlier_at] + [c for at, c in saved if at == AS_OF]
    assert [s.cause for s in loaded] == expected
    assert loaded[-1].mrr_by_currency == {"usd": 58}  # the latest is what "unchanged MRR" compares to


def test_given_a_snapshots_table_from_an_older_version_then_ensure_schema_upgrades_it_in_place(
    store_factory: StoreFactory,
) -> None:
    old = store_factory.open()
    old.execute(  # the table as the first release created it
        "CREATE TABLE perly_mrr_snapshots (customer_id TEXT NOT NULL, at TEXT NOT NULL,"
        " mrr_by_currency TEXT NOT NULL, cause TEXT)"
    )
    for cause in ("evt_a", "evt_b"):
        old.execute(
            "INSERT INTO perly_mrr_snapshots (customer_id, at, mrr_by_currency, cause) VALUES (?, ?, ?, ?)",
            ("cus_1", "2026-11-01T00:00:00Z", '{"usd": 1}', cause),
        )
    upgraded = store_factory.open()
    upgraded.ensure_schema()
    upgraded.ensure_schema()  # a second start finds it done
    upgraded.save_results([], [("cus_1", MrrSnapshot(at=AS_OF, mrr_by_currency={"usd": 2}, cause="evt_c"))])
    assert [s.cause for s in upgraded.load_bundle("cus_1").snapshots] == ["evt_a", "evt_b", "evt_c"]


def test_given_a_risk_score_with_no_flag_then_the_customer_is_marked_time_sensitive(store: Store) -> None:
    # e.g. MRR fell 60 days ago: no flag is raised, yet the score's 90-day trend expires with time
    store.ensure_schema()
    scored = quiet_health("cus_trend", AS_OF, risk_score=11, mrr=1000)
    quiet = quiet_health("cus_quiet", AS_OF, mrr=1000)
    store.save_results(
        [
            CustomerEvaluation(
                health=h, movements=[], plan_changes=[], snapshot=MrrSnapshot(AS_OF, {}, "as_of")
            )
            for h in (scored, quiet)
        ],
        [],
    )
    store.mark_time_sensitive(AS_OF)
    assert store.dirty_customers() == {"cus_trend"}


def test_given_a_row_counting_failed_payments_of_the_last_90_days_then_it_is_time_sensitive(
    store: Store,
) -> None:
    # The failed charge has left the window at the new as_of, but the stored row still counts it.
    row = quiet_health("cus_aged_failure", AS_OF - timedelta(days=7), failed_payments_90d=1)
    store.save_results([CustomerEvaluation(row, [], [], MrrSnapshot(AS_OF, {}, "as_of"))], [])
    store.mark_time_sensitive(AS_OF)
    assert "cus_aged_failure" in store.dirty_customers()


@pytest.mark.postgres
def test_on_postgres_a_store_opened_while_another_process_creates_its_schema_opens(tmp_path: Path) -> None:
    """`perly-webhooks --workers 2` on a new schema: both processes create it at once, and the one
    whose CREATE SCHEMA IF NOT EXISTS looked before the other's committed must open all the same."""
    import psycopg

    from integration_tests.postgres import postgres_dsn

    factory = StoreFactory("postgres", tmp_path)
    outcome: list[object] = []
    try:
        dsn = postgres_dsn()
        with psycopg.connect(dsn) as other, psycopg.connect(dsn, autocommit=True) as watch:
            other.execute(f'CREATE SCHEMA "{factory.schema}"')  # not committed yet
            opening = threading.Thread(target=lambda: outcome.append(_open_or_error(factory)))
            opening.start()
            deadline = time.monotonic() + 10
            while not watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'destination-perly'"
                " AND wait_event_type = 'Lock'"
            ).fetchall():
                assert time.monotonic() < deadline, "the second CREATE SCHEMA never waited for the first"
                time.sleep(0.05)
            other.commit()
        opening.join(timeout=30)
        [opened] = outcome
        assert isinstance(opened, Store), opened
        assert opened.query("SELECT current_schema() AS schema") == [{"schema": factory.schema}]
    finally:
        factory.cleanup()


def _open_or_error(factory: StoreFactory) -> object:
    try:
        return factory.open()
    except Exception as exc:  # the outcome is asserted by the test
        return exc


@pytest.mark.postgres
def test_given_postgresql_then_raw_objects_are_compressed_with_lz4(tmp_path: Path) -> None:
    """pglz cost about half the server's CPU of a bulk load; lz4 several times less (test server: 15)."""
    factory = StoreFactory("postgres", tmp_path)
    try:
        store = factory.open()
        store.ensure_schema()
        store.upsert_records("invoices", [invoice("in_1", "cus_1", description="a long line " * 500)])
        rows = store.query(
            f"SELECT pg_column_compression(data) AS method FROM {table_for_stream('invoices')}"
        )
        assert rows == [{"method": "lz4"}]
    finally:
        factory.cleanup()


@pytest.mark.postgres
def test_on_postgres_bundles_read_the_history_tables_through_their_indexes_without_statistics(
    postgres_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first sync's refresh fills the history tables as it goes, never analyzed: reading them whole
    for every chunk made its cost grow with the square of the book."""
    store = postgres_factory.open()
    store.ensure_schema()
    movement = MrrMovement("cus_0000", AS_OF, "new", None, "usd", 0, 1500, 1500, "sub_1")
    movements = [dataclasses.replace(movement, customer_id=f"cus_{n:04}") for n in range(4000)]
    store.save_results([evaluation_of("cus_0000", AS_OF, movements, [])], [])
    plans: list[str] = []
    fetch = store._fetch_tuples

    def explaining(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if "FROM perly_mrr_movements" in sql:
            plans.append(" ".join(str(row[0]) for row in fetch(f"EXPLAIN {sql}", params)))
        return fetch(sql, params)

    monkeypatch.setattr(store, "_fetch_tuples", explaining)
    chunk = [f"cus_{n:04}" for n in range(0, 4000, 40)]  # 100 customers, as a refresh chunk
    with store.transaction():
        bundles = store.load_bundles(chunk)

    assert all(len(bundles[c].history.movements) == 1 for c in chunk)  # type: ignore[union-attr]
    assert plans
    assert "Seq Scan" not in plans[0]
    assert "perly_mrr_movements_customer_idx" in plans[0]


def test_given_stream_tables_a_small_account_never_had_then_loading_asks_the_catalog_once_and_sees_later_ones(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory.open()
    store.ensure_schema()
    store.upsert_records("customers", [customer("cus_1")])  # no subscriptions, invoices, prices, ...
    asked: list[int] = []
    list_tables = store._list_tables

    def counted() -> set[str]:
        asked.append(1)
        return list_tables()

    monkeypatch.setattr(store, "_list_tables", counted)
    assert store.load_bundles(["cus_1"], store.load_lookups())["cus_1"].subscriptions == []
    assert len(asked) == 2  # once for the lookups, once for the customer's lists

    other = store_factory.open()  # a sync creating a table the receiver's connection had not seen
    other.upsert_records("subscriptions", [subscription("sub_1", "cus_1")])
    assert [s["id"] for s in store.load_bundles(["cus_1"])["cus_1"].subscriptions] == ["sub_1"]


def test_given_one_process_s_connections_to_a_sqlite_file_then_they_take_turns_the_urgent_one_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook receiver's writer (urgent) and refresher share a file: a write waits for the
    transaction in progress only, and goes before the other waiting ones, without polling SQLite's
    lock (here SQLite would refuse at once: no busy timeout, no retries)."""
    monkeypatch.setattr("destination_perly.store.sqlite.LOCK_RETRIES", 1)
    holder, refresher, writer = (SqliteStore(tmp_path / "perly.db") for _ in range(3))
    holder.ensure_schema()
    for store in (refresher, writer):
        store._conn.execute("PRAGMA busy_timeout = 0")
    writer.urgent_writes = True
    order: list[str] = []
    errors: list[BaseException] = []

    def write(store: Store, name: str) -> None:
        try:
            with store.transaction():
                store.mark_dirty([f"cus_{name}"])
                order.append(name)
        except BaseException as error:
            errors.append(error)

    with holder.transaction():
        holder.mark_dirty(["cus_holder"])
        threads = [threading.Thread(target=write, args=(refresher, "refresher"))]
        threads[0].start()
        time.sleep(0.2)  # the refresher waits first
        threads.append(threading.Thread(target=write, args=(writer, "writer")))
        threads[1].start()
        deadline = time.monotonic() + 10
        while not writer._turns._urgent_waiting and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert order == ["writer", "refresher"]
    assert holder.dirty_customers() == {"cus_holder", "cus_writer", "cus_refresher"}
