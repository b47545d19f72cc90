"""PostgreSQL backend (psycopg 3): tables in one schema, safe with several writers at once.

Upserts rely on `ON CONFLICT ... WHERE excluded.updated >= table.updated`, so two processes writing
versions of the same object keep the newer one whatever order they commit in. Schema changes take a
transaction-scoped advisory lock so concurrent `CREATE TABLE IF NOT EXISTS` never collide.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from operator import itemgetter
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.rows import dict_row, tuple_row

from destination_perly.private_files import private_temp_file
from destination_perly.store.base import (
    PARTIAL_INDEXED_STREAMS,
    CustomerIdsOf,
    Record,
    Store,
    StoredBundle,
    StoreError,
    StoreUnreachable,
    partial_index_ddls,
    table_for_stream,
)

# PostgreSQL's type ids of the columns' elements and arrays, and its binary array format's parts.
TEXT_OID, TEXT_ARRAY_OID, BIGINT_OID, BIGINT_ARRAY_OID = 25, 1009, 20, 1016
_HEAD = struct.Struct("!iiIii").pack
_LENGTH = struct.Struct("!i").pack
_BIGINT_ELEMENT = struct.Struct("!iq").pack
_NULL_ELEMENT = _LENGTH(-1)
CONNECT_TIMEOUT_S = 10
# How long switching an older table to lz4 may wait for the table's lock (others queue behind it).
LZ4_LOCK_WAIT_MS = 500
# How long building a missing partial index may wait for each transaction already writing the table
# (the build never blocks them; our own start waits).
PARTIAL_INDEX_WAIT_MS = 2000
# The statistics target of the writer's own ANALYZE before a refresh (see analyze_grown).
ANALYZE_STATISTICS_TARGET = 10

log = logging.getLogger("perly.store")


class EncodedArray:
    """An array parameter already in PostgreSQL's binary format (`text_array`, `bigint_array`)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class TextArray(EncodedArray):
    pass


class BigintArray(EncodedArray):
    pass


class _TextArrayDumper(Dumper):
    format = psycopg.pq.Format.BINARY
    oid = TEXT_ARRAY_OID

    def dump(self, obj: EncodedArray) -> bytes:
        return obj.payload


class _BigintArrayDumper(_TextArrayDumper):
    oid = BIGINT_ARRAY_OID


def _array_head(values: Sequence[Any], element_oid: int) -> bytes:
    """One dimension, whether any element is NULL, the elements' type, their count, from index 1."""
    return _HEAD(1, int(None in values), element_oid, len(values), 1)


def text_array(values: Sequence[str | bytes | None]) -> TextArray:
    """Each element's length and UTF-8 bytes (-1: NULL). Bytes are taken as they are: the raw objects
    come as orjson's UTF-8 (`Row.data`), never decoded to str and encoded again."""
    parts = [_array_head(values, TEXT_OID)]
    for value in values:
        if value is None:
            parts.append(_NULL_ELEMENT)
            continue
        # (anything but str and bytes fails here: psycopg adapts the column instead)
        encoded = value if isinstance(value, bytes) else value.encode()
        parts.append(_LENGTH(len(encoded)))
        parts.append(encoded)
    return TextArray(b"".join(parts))


def bigint_array(values: Sequence[int | None]) -> BigintArray:
    parts = [_array_head(values, BIGINT_OID)]
    parts.extend(_NULL_ELEMENT if value is None else _BIGINT_ELEMENT(8, value) for value in values)
    return BigintArray(b"".join(parts))


# The column types whose arrays `_execute_arrays` encodes itself (format_type's names).
ARRAY_ENCODERS: dict[str, Callable[[Sequence[Any]], EncodedArray]] = {
    "text": text_array,
    "bigint": bigint_array,
}


def _array(column_type: str, values: Sequence[Any]) -> Any:
    """A column's values as its array parameter: encoded here when it can be, else a list for psycopg
    to adapt (and to report what it cannot, as before)."""
    encode = ARRAY_ENCODERS.get(column_type)
    if encode is not None:
        with suppress(AttributeError, TypeError, UnicodeEncodeError, struct.error):
            return encode(values)
    return list(values)


def _pg_sql(text: str) -> str:
    """`?` placeholders (the store's convention) to psycopg's `%s`."""
    return text.replace("%", "%%").replace("?", "%s")


def scrub(message: str, secret: str | None) -> str:
    return message.replace(secret, "***") if secret else message


# SQLSTATEs of a server that dropped the connection, is shutting down or starting, or is full.
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# libpq's own errors carry no SQLSTATE: these words say the server is not there now.
UNREACHABLE_PHRASES = (
    "connection refused",
    "timeout expired",
    "server closed the connection",
    "the connection is closed",
    "connection reset",
    "the database system is",  # starting up, shutting down, in recovery mode
    "too many clients",
    "no route to host",
    "network is unreachable",
)


def is_unreachable(error: BaseException) -> bool:
    """A PostgreSQL error that means "try again later" (refused, lost, restarting), not "fix the
    configuration" (a wrong password or database name)."""
    if not isinstance(error, psycopg.OperationalError):
        return False
    if error.sqlstate:
        return error.sqlstate.startswith(UNREACHABLE_SQLSTATES)
    text = str(error).lower()
    return any(phrase in text for phrase in UNREACHABLE_PHRASES)


class PostgresStore(Store):
    int_type = "BIGINT"

    def __init__(
        self,
        *,
        schema: str = "perly",
        dsn: str | None = None,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ssl_mode: str | None = None,
        ca_certificate: str | None = None,
        customer_ids_of: CustomerIdsOf | None = None,
    ) -> None:
        """`ca_certificate`: PEM text of the CA to verify the server with (libpq reads it from a file)."""
        super().__init__(customer_ids_of)
        self.schema = schema
        self._reopen = functools.partial(
            PostgresStore,
            schema=schema,
            dsn=dsn,
            host=host,
            port=port,
            database=database,
            username=username,
            password=password,
            ssl_mode=ssl_mode,
            ca_certificate=ca_certificate,
            customer_ids_of=customer_ids_of,
        )
        # libpq reads the CA from a file: a 0600 temporary one, removed when the store closes.
        self._ca_file = private_temp_file(ca_certificate, "perly-ca-") if ca_certificate else None
        params: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "destination-perly",
        }
        for key, value in (
            ("host", host),
            ("port", port),
            ("dbname", database),
            ("user", username),
            ("password", password),
            ("sslmode", ssl_mode),
            ("sslrootcert", self._ca_file),
        ):
            if value is not None:
                params[key] = value
        try:
            self._conn: psycopg.Connection[dict[str, Any]] = psycopg.connect(
                dsn or "", autocommit=True, row_factory=dict_row, **params
            )
            # Another process creating it at the same moment (`--workers 2` on a new schema) commits
            # after IF NOT EXISTS has looked: this one then meets the unique name, which is as good.
            with suppress(psycopg.errors.UniqueViolation):
                self._conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        except psycopg.Error as exc:
            self._remove_ca_file()
            # libpq messages name host, port and user, never the password; scrub it anyway.
            error = StoreUnreachable if is_unreachable(exc) else StoreError
            raise error(f"cannot connect to PostgreSQL: {scrub(str(exc).strip(), password)}") from None
        self._sql_cache: dict[str, str] = {}
        self._conn.adapters.register_dumper(TextArray, _TextArrayDumper)
        self._conn.adapters.register_dumper(BigintArray, _BigintArrayDumper)

    def _convert(self, text: str) -> str:
        converted = self._sql_cache.get(text)
        if converted is None:
            converted = self._sql_cache[text] = _pg_sql(text)
        return converted

    def reader_opener(self) -> Callable[[], Store] | None:
        return self._reopen

    def _begin(self) -> None:
        self._conn.execute("BEGIN")

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("ROLLBACK")

    def _lock_schema(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"perly:{self.schema}",))

    def lock_customers(self, customer_ids: Sequence[str]) -> None:
        """Transaction-scoped advisory locks, taken in sorted order so two writers never deadlock."""
        keys = sorted(self._customer_locks(customer_ids))
        if keys:
            self._conn.execute(
                "SELECT count(pg_advisory_xact_lock(hashtext(k)))"
                " FROM (SELECT k FROM unnest(%s::text[]) AS k ORDER BY k) AS ordered",
                (keys,),
            )

    def try_lock_customers(self, customer_ids: Sequence[str]) -> list[str]:
        locks = self._customer_locks(customer_ids)
        if not locks:
            return []
        held = self._fetch(
            "SELECT k FROM unnest(?::text[]) AS k WHERE pg_try_advisory_xact_lock(hashtext(k))",
            (sorted(locks),),
        )
        return sorted(locks[str(row["k"])] for row in held)

    def _customer_locks(self, customer_ids: Sequence[str]) -> dict[str, str]:
        """Each customer's advisory lock key -> the customer id."""
        return {f"perly:{self.schema}:{c}": c for c in set(customer_ids)}

    insertion_order = "seq"
    refreshes_in_parallel = True
    flushes_pipelined = True

    def _ensure_insertion_order(self, table: str) -> None:
        # An identity column: numbers existing rows too, then each insert in turn. Checked first: an
        # ALTER takes an exclusive lock on the table even when the column is already there.
        if "seq" not in self._list_columns(table):
            self._execute(f"ALTER TABLE {table} ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY")

    def _execute(self, text: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(self._convert(text), tuple(params))

    def _executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(self._convert(text), rows)

    @contextmanager
    def batched(self) -> Iterator[None]:
        if self._conn.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
            yield  # inside an open batch: the statements join it, and its end reports what failed
            return
        try:
            with self._conn.pipeline():
                yield
        except BaseException:
            # A statement that failed inside the pipeline leaves its transaction open and aborted
            # (a lost connection cannot roll back: its own error is the one worth raising).
            self._tables = None
            with suppress(psycopg.Error):
                self._rollback()
            raise

    # --- bulk writes ---------------------------------------------------------------------------
    @functools.cached_property
    def _lz4(self) -> bool:
        """Whether the server offers lz4 (14+, built with it): it compresses and expands the raw
        objects' TOAST several times faster than the default pglz, for about the same size."""
        return bool(
            self._fetch(
                "SELECT 1 AS yes FROM pg_settings"
                " WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
            )
        )

    def _raw_json_type(self) -> str:
        return "TEXT COMPRESSION lz4" if self._lz4 else "TEXT"

    def ensure_schema(self) -> None:
        super().ensure_schema()
        self._build_missing_partial_indexes()
        self._lz4_for_new_rows()

    def _add_missing_partial_indexes(self) -> None:
        """Not in `ensure_schema`'s transaction: a plain CREATE INDEX there would hold up every writer
        for the whole build (see _build_missing_partial_indexes)."""

    def _build_missing_partial_indexes(self) -> None:
        """Builds the clock (and bundle) indexes missing from older stream tables CONCURRENTLY: writers
        (a live webhook receiver) go on meanwhile. The build waits at most PARTIAL_INDEX_WAIT_MS for each
        transaction already writing the table; giving up, or being interrupted, leaves an invalid index,
        dropped and built again at the next start. One process builds at a time (an advisory lock
        tried, not waited for: another process starting meanwhile leaves it to the first)."""
        live = {table_for_stream(stream): stream for stream in PARTIAL_INDEXED_STREAMS}
        valid = dict(
            self._fetch_tuples(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ? AND c.relname LIKE ?",
                (self.schema, "%\\_idx"),
            )
        )
        missing = [
            (table, index, ddl)
            for table in sorted(self.present_tables(live))
            for index, ddl in partial_index_ddls(table, live[table], concurrently=True).items()
            if not valid.get(index)
        ]
        lock = f"perly:{self.schema}:clock_indexes"  # (the name older versions take, too)
        if not missing or not self._fetch_tuples("SELECT pg_try_advisory_lock(hashtext(?))", (lock,))[0][0]:
            return
        try:
            self._execute(f"SET lock_timeout = {PARTIAL_INDEX_WAIT_MS}")
            for table, index, ddl in missing:
                try:
                    if index in valid:  # invalid: left by an interrupted build
                        self._execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
                    self._execute(ddl)
                except psycopg.errors.LockNotAvailable:
                    log.info("%s is busy: its index %s is left for the next start", table, index)
        finally:
            self._execute("RESET lock_timeout")
            self._execute("SELECT pg_advisory_unlock(hashtext(?))", (lock,))

    def _lz4_for_new_rows(self) -> None:
        """Stream tables created before lz4 (pglz) compress the rows written from now on with lz4; rows
        already stored keep pglz (no rewrite). The ALTER holds the table's exclusive lock for an instant,
        but queues every reader and writer behind it while it waits: it waits at most LZ4_LOCK_WAIT_MS
        for a busy table (a webhook receiver writing) and is otherwise left for the next start."""
        if not self._lz4:
            return
        pglz_tables = self._fetch_tuples(
            "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ? AND c.relkind = 'r'"
            " AND c.relname LIKE 'stripe\\_%' AND a.attname = 'data' AND a.attcompression <> 'l'",
            (self.schema,),
        )
        for (table,) in pglz_tables:
            try:
                with self.transaction():
                    self._execute(f"SET LOCAL lock_timeout = {LZ4_LOCK_WAIT_MS}")
                    self._execute(f"ALTER TABLE {table} ALTER COLUMN data SET COMPRESSION lz4")
            except psycopg.errors.LockNotAvailable:
                log.info("%s is busy: its new rows stay pglz-compressed until the next start", table)

    def _insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        insert = f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest("
        self._execute_arrays(table, columns, rows, insert, ")")

    def _upsert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], key: str, update: str
    ) -> None:
        rows = sorted(rows, key=itemgetter(list(columns).index(key)))  # two writers lock in one order
        insert = f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest("
        self._execute_arrays(table, columns, rows, insert, f") ON CONFLICT ({key}) DO UPDATE SET {update}")

    def _delete_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        delete = f"DELETE FROM {table} WHERE ({', '.join(columns)}) IN (SELECT * FROM unnest("
        self._execute_arrays(table, columns, rows, delete, "))")

    def _execute_arrays(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], head: str, tail: str
    ) -> None:
        """`head`, the rows as one array per column of `table`, `tail`: the arrays sent in binary, one
        statement and round trip for the whole batch (a statement per row costs several times the
        CPU on both sides; arrays sent as text cost more still, in escaping). Text and bigint arrays
        are encoded here (`ARRAY_ENCODERS`: psycopg's own dumpers cost twice as much, in looking for
        each column's type and walking the elements)."""
        if not rows:
            return
        known = self._column_types.get(table, {})
        if not all(column in known for column in columns):  # a new table, or a column added since
            known = self._column_types[table] = dict(
                self._fetch_tuples(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped",
                    (table,),
                )
            )
        arrays = ", ".join(f"%b::{known[column]}[]" for column in columns)
        columns_values = zip(*rows, strict=True)
        values = [_array(known[name], column) for name, column in zip(columns, columns_values, strict=True)]
        self._conn.execute(_pg_sql(head) + arrays + _pg_sql(tail), values)

    @functools.cached_property
    def _column_types(self) -> dict[str, dict[str, str]]:
        """Column types by table, for the arrays' casts."""
        return {}

    def analyze_grown(self, written: Mapping[str, int]) -> None:
        """ANALYZE each table never analyzed or grown by more than a tenth (autovacuum's own threshold,
        which it reaches only a minute or so later). Without statistics the planner reads the bundles
        of every refresh chunk by a parallel scan of whole tables: at 10x the book it spent more on
        that than on everything else the refresh does.

        A sample of 300 x ANALYZE_STATISTICS_TARGET rows (not the server's default 30,000) is enough for
        that choice, and the refresh waits for it: 0.05 s instead of 0.14-0.17 s at 1x the book. The
        coarser statistics stay until the table next grows by a tenth (then autovacuum or this ANALYZE
        runs again); the store's own queries (by customer, by id, the clock indexes) need no more."""
        with self.transaction():
            self._execute(f"SET LOCAL default_statistics_target = {ANALYZE_STATISTICS_TARGET}")
            for stream, rows in sorted(written.items()):
                table = table_for_stream(stream)
                if not rows or not self.has_table(table):
                    continue
                found = self._fetch_tuples("SELECT reltuples FROM pg_class WHERE oid = ?::regclass", (table,))
                known = float(found[0][0]) if found else -1.0
                if known < 0 or rows > known / 10:
                    self._execute(f"ANALYZE {table}")

    def load_stored_bundles(
        self, customer_ids: Iterable[str], lookups: dict[str, dict[str, Record]] | None = None
    ) -> dict[str, StoredBundle]:
        """Every read here is by customer (or id) through an index; the planner is told so (for the
        rest of the transaction), since it cannot tell from statistics it may not have: the history
        tables fill up during a first sync's refresh, never analyzed, and at 10x the book it read
        them whole for every chunk (movements, snapshots and plan changes: 1.2-4.3 s of the server's
        CPU, while another connection's inserts kept landing in them)."""
        with self.transaction():
            self._execute("SET LOCAL enable_seqscan = off")
            return super().load_stored_bundles(customer_ids, lookups)

    def _fetch(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._conn.execute(self._convert(text), tuple(params)).fetchall()

    def _fetch_tuples(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn.cursor(row_factory=tuple_row) as cur:
            return cur.execute(self._convert(text), tuple(params)).fetchall()

    # The raw objects' UTF-8 bytes, as bytea (with results in binary: as they are stored).
    _raw_objects = "textsend(data)"

    def _fetch_raw_objects(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn.cursor(row_factory=tuple_row) as cur:
            return cur.execute(self._convert(text), tuple(params), binary=True).fetchall()

    def _list_tables(self) -> set[str]:
        rows = self._fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", (self.schema,)
        )
        return {str(r["table_name"]) for r in rows}

    def _list_columns(self, table: str) -> set[str]:
        rows = self._fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            (self.schema, table),
        )
        return {str(r["column_name"]) for r in rows}

    def close(self) -> None:
        self._conn.close()
        self._remove_ca_file()

    def _remove_ca_file(self) -> None:
        if self._ca_file is not None:
            Path(self._ca_file).unlink(missing_ok=True)
            self._ca_file = None
