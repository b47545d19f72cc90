"""PostgreSQL stream tables created before raw objects were lz4-compressed: the store switches their
new rows to lz4 when it opens, without holding up a writer that is using the table."""

from __future__ import annotations

import pytest

from destination_perly.store.base import Store, table_for_stream
from unit_tests.destination.builders import invoice
from unit_tests.destination.conftest import StoreFactory, opens_without_waiting, writer_mid_transaction

pytestmark = pytest.mark.postgres

TABLE = table_for_stream("invoices")
LONG = "a long line " * 500  # long enough for PostgreSQL to compress the row


@pytest.fixture
def older_store(postgres_factory: StoreFactory) -> Store:
    """A store whose invoices table was created before lz4 (the column has no method: the server's
    default, pglz), holding one compressed row."""
    store = postgres_factory.open()
    store.ensure_schema()
    store.ensure_stream_table("invoices")
    store.execute(f"ALTER TABLE {TABLE} ALTER COLUMN data SET COMPRESSION default")
    store.upsert_records("invoices", [invoice("in_old", "cus_1", description=LONG)])
    return store


def compression(store: Store) -> dict[str, str]:
    rows = store.query(f"SELECT id, pg_column_compression(data) AS method FROM {TABLE} ORDER BY id")
    return {row["id"]: row["method"] for row in rows}


def column_method(store: Store) -> str:
    rows = store.query(
        "SELECT a.attcompression::text AS method FROM pg_attribute a"
        f" WHERE a.attrelid = '{TABLE}'::regclass AND a.attname = 'data'"
    )
    return str(rows[0]["method"])


def test_given_an_older_pglz_table_when_the_store_opens_then_new_rows_are_lz4_and_old_ones_still_read(
    postgres_factory: StoreFactory, older_store: Store
) -> None:
    assert compression(older_store) == {"in_old": "pglz"}

    reopened = postgres_factory.open()
    reopened.ensure_schema()
    reopened.upsert_records("invoices", [invoice("in_new", "cus_1", description=LONG)])

    assert compression(reopened) == {"in_new": "lz4", "in_old": "pglz"}  # no rewrite of stored rows
    assert reopened.load_records("invoices", ["in_old"])["in_old"]["description"] == LONG


def test_given_a_writer_mid_transaction_on_the_table_then_opening_does_not_wait_for_it(
    postgres_factory: StoreFactory, older_store: Store
) -> None:
    reopened = postgres_factory.open()
    with writer_mid_transaction(postgres_factory, TABLE):
        assert opens_without_waiting(reopened)  # it gave up on the busy table instead of waiting
        assert column_method(reopened) == ""

    reopened.ensure_schema()  # the next start, with the table free
    assert column_method(reopened) == "l"
