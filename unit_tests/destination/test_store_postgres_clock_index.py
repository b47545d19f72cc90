"""PostgreSQL stream tables created before the clock indexes: the store builds them concurrently when
it opens, never holding up a writer (a webhook receiver) that is using the table."""

from __future__ import annotations

import threading

import pytest

from destination_perly.store.base import Store, table_for_stream
from unit_tests.destination.builders import AS_OF, invoice
from unit_tests.destination.conftest import StoreFactory, opens_without_waiting, writer_mid_transaction

pytestmark = pytest.mark.postgres

TABLE = table_for_stream("invoices")
INDEX = f"{TABLE}_clock_idx"


@pytest.fixture
def older_store(postgres_factory: StoreFactory) -> Store:
    """A store whose invoices table was created before the clock indexes, holding an open invoice."""
    store = postgres_factory.open()
    store.ensure_schema()
    store.upsert_records("invoices", [invoice("in_open", "cus_open", status="open")])
    store.execute(f"DROP INDEX {INDEX}")
    return store


def index_state(store: Store) -> str:
    """The index's state: valid, invalid (a concurrent build that did not finish) or missing."""
    rows = store.query(
        "SELECT i.indisvalid AS valid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = ?",
        (INDEX,),
    )
    return "missing" if not rows else "valid" if rows[0]["valid"] else "invalid"


def test_given_a_writer_mid_transaction_then_opening_gives_up_and_the_next_start_rebuilds_the_index(
    postgres_factory: StoreFactory, older_store: Store
) -> None:
    reopened = postgres_factory.open()
    with writer_mid_transaction(postgres_factory, TABLE):
        assert opens_without_waiting(reopened)  # it gave up on the busy table instead of waiting
        assert index_state(reopened) == "invalid"  # what an interrupted concurrent build leaves

    reopened.ensure_schema()  # the next start, with the table free: the invalid index is replaced
    assert index_state(reopened) == "valid"
    reopened.mark_time_sensitive(AS_OF)
    assert reopened.dirty_customers() == {"cus_open"}


def test_given_a_receiver_writing_steadily_then_the_index_is_still_built(
    postgres_factory: StoreFactory, older_store: Store
) -> None:
    done = threading.Event()

    def keep_writing() -> None:
        writer = postgres_factory.open()
        n = 0
        while not done.is_set():
            writer.upsert_records("invoices", [invoice(f"in_{n}", "cus_w")])
            n += 1

    writing = threading.Thread(target=keep_writing, daemon=True)
    writing.start()
    try:
        reopened = postgres_factory.open()
        reopened.ensure_schema()
    finally:
        done.set()
        writing.join(timeout=30)

    assert index_state(reopened) == "valid"
