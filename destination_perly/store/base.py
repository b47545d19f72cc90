"""The Perly store: one interface, SQL shared by the SQLite and PostgreSQL backends.

No Airbyte protocol here. Records are raw Stripe dicts; the store keeps the latest version per id
(newer `updated` wins, equal `updated` keeps the later arrival), tombstones mark rows deleted.
All SQL is written with `?` placeholders; the PostgreSQL backend converts them.

Column types are chosen so both backends return the same Python values: datetimes are ISO-8601
UTC text (`2026-11-01T00:00:00Z`), booleans are integers 0/1, lists and maps are JSON text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from destination_perly.health.model import (
    BUNDLE_CHARGE_STATUSES,
    BUNDLE_EVENT_TYPE_PREFIX,
    CustomerBundle,
    CustomerEvaluation,
    CustomerHealth,
    MrrMovement,
    MrrSnapshot,
    PlanChange,
    StoredHistory,
)
from stripe_vocabulary import customer_of, unix_seconds

Record = dict[str, Any]
CustomerIdsOf = Callable[[str, Record], Iterable[str]]

HEALTH_TABLE = "perly_customer_health"
MOVEMENTS_TABLE = "perly_mrr_movements"
PLAN_CHANGES_TABLE = "perly_plan_changes"
SNAPSHOTS_TABLE = "perly_mrr_snapshots"
DIRTY_TABLE = "perly_dirty_customers"
PROBE_TABLE = "perly_check_probe"

# Streams whose rows belong to one customer and are handed to the health engine as lists.
CUSTOMER_LIST_STREAMS = ("subscriptions", "invoices", "charges", "events")
# Account-wide lookups handed to the engine whole, by id.
LOOKUP_STREAMS = ("coupons", "prices", "products")
# Of these, only the rows the rules read are loaded (see CustomerBundle): parsing the rest cost about a
# sixth of a refresh. Each kept kind has a partial index by customer (`bundle_index_ddl`): without,
# SQLite read every charge and event of a refresh's customers to keep about a twentieth and a fifth of
# them (0.07 and 0.03 CPU s of the 1.6 for the 2,000-customer book). Written out, not bound, so that
# the planners can match a query's condition to its index.
_BUNDLE_CHARGE_STATUSES = ", ".join(f"'{status}'" for status in BUNDLE_CHARGE_STATUSES)
BUNDLE_ROWS: dict[str, str] = {
    "charges": f"status IN ({_BUNDLE_CHARGE_STATUSES}) AND deleted = 0",
    "events": f"type LIKE '{BUNDLE_EVENT_TYPE_PREFIX}%' AND deleted = 0",
}
# The rows that make a customer's health change with the clock alone, per stream: (indexed columns,
# condition, whether only those created since the lookback count). Each has a partial index, so
# `mark_time_sensitive` reads those few rows instead of scanning the tables (2 s at 10x the book);
# the condition is written out, not bound, so that the planners can match it to the index.
TIME_SENSITIVE_ROWS: dict[str, tuple[str, str, bool]] = {
    "invoices": ("customer_id", "status = 'open' AND deleted = 0", False),
    "subscriptions": ("customer_id", "status IN ('trialing', 'past_due', 'unpaid') AND deleted = 0", False),
    "charges": ("created, customer_id", "status = 'failed' AND deleted = 0", True),
}


def clock_index_ddl(table: str, stream: str, concurrently: bool = False) -> str:
    """The partial index of `stream`'s time-sensitive rows (see TIME_SENSITIVE_ROWS) on `table`."""
    columns, rows, _ = TIME_SENSITIVE_ROWS[stream]
    how = "CONCURRENTLY " if concurrently else ""
    return f"CREATE INDEX {how}IF NOT EXISTS {table}_clock_idx ON {table} ({columns}) WHERE {rows}"


def bundle_index_ddl(table: str, stream: str, concurrently: bool = False) -> str:
    """The partial index of the rows of `stream` a bundle holds (see BUNDLE_ROWS) on `table`."""
    how = "CONCURRENTLY " if concurrently else ""
    rows = BUNDLE_ROWS[stream]
    return f"CREATE INDEX {how}IF NOT EXISTS {table}_bundle_idx ON {table} (customer_id) WHERE {rows}"


# The streams whose tables have partial indexes (clock, bundle or both).
PARTIAL_INDEXED_STREAMS = tuple(sorted({*TIME_SENSITIVE_ROWS, *BUNDLE_ROWS}))


def partial_index_ddls(table: str, stream: str, concurrently: bool = False) -> dict[str, str]:
    """The partial indexes `stream`'s table `table` has (its clock and bundle indexes), by name."""
    found: dict[str, str] = {}
    if stream in TIME_SENSITIVE_ROWS:
        found[f"{table}_clock_idx"] = clock_index_ddl(table, stream, concurrently)
    if stream in BUNDLE_ROWS:
        found[f"{table}_bundle_idx"] = bundle_index_ddl(table, stream, concurrently)
    return found


# Keeps IN (...) lists well under every backend's parameter limit.
IN_CHUNK = 500


class StoreError(Exception):
    """A store problem worth showing to the user as is (never contains secrets)."""


class StoreUnreachable(StoreError):
    """The store cannot be reached now (connection refused, server restarting): worth a retry."""


class Row(NamedTuple):
    """One record as stored: the columns the health code and readers need, plus the raw JSON."""

    id: str
    updated: int
    deleted: int
    customer_id: str | None
    created: int | None
    status: str | None
    type: str | None  # the object's own `type`: an event's (e.g. `invoice.paid`), a price's
    # The raw object as orjson writes it (UTF-8 JSON), stored as text. Never decoded to a str between
    # the input reader and the store: each decoding was undone by an encoding further on.
    data: bytes
    generation_id: int | None


ROW_COLUMNS = Row._fields


def table_for_stream(stream: str) -> str:
    """`stripe_<safe name>`; a name that had to be changed gets a hash so two streams never collide."""
    safe = re.sub(r"[^a-z0-9_]", "_", stream.lower())[:40]
    if safe != stream:
        safe = f"{safe}_{hashlib.sha1(stream.encode()).hexdigest()[:8]}"  # noqa: S324 - a name, not security
    return f"stripe_{safe}"


def record_version(record: Record) -> int:
    """The record's place in the order of versions: `updated`, else `created` (events), else 0."""
    for key in ("updated", "created"):
        value = unix_seconds(record.get(key))
        if value is not None:
            return value
    return 0


def make_row(stream: str, record: Record, customer_id: str | None, generation_id: int | None) -> Row:
    status = record.get("status")
    kind = record.get("type")
    return Row(
        id=str(record["id"]),
        updated=record_version(record),
        deleted=1 if record.get("deleted") is True else 0,
        customer_id=customer_id,
        created=unix_seconds(record.get("created")),
        status=status if isinstance(status, str) else None,
        type=kind if isinstance(kind, str) else None,
        # An exact copy: orjson's own bytes keep the whole buffer it wrote into (8 KB for a 400-byte
        # object), and a row is kept until its flush (the input reader spent a fifth more CPU).
        data=bytes(memoryview(orjson.dumps(record))),
        generation_id=generation_id,
    )


def latest_per_id(rows: Iterable[Row]) -> list[Row]:
    """Collapses a batch to one row per id (newer `updated`; tie: later arrival), keeping order."""
    best: dict[str, Row] = {}
    for row in rows:
        kept = best.get(row.id)
        if kept is None or row.updated >= kept.updated:
            best[row.id] = row
    return list(best.values())


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is UTC and value.year >= 1000:
        # Nearly every saved time: half of strftime's cost (which does not pad years before 1000);
        # %-formatting is faster here than an f-string with format specs.
        return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
        )
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _column_type(annotation: Any, int_type: str) -> str:
    text = str(annotation)
    if "datetime" in text or "str" in text or "list" in text or "dict" in text:
        return "TEXT"
    if "bool" in text or "int" in text:
        return int_type
    return "TEXT"


def _db_value(value: Any) -> Any:
    """A dataclass field as stored: see the module docstring."""
    if value is None or type(value) is str or type(value) is int:  # most fields: stored as they are
        return value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, list | dict | tuple):
        return orjson.dumps(value).decode()
    return value


# The stores' integer columns (SQLite INTEGER, PostgreSQL BIGINT) hold signed 64-bit values.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
VERSION_FIELDS = ("updated", "created")  # stored as integer columns of every stream's table


def version_beyond_int64(record: Record) -> str | None:
    """The first of the record's `updated` and `created` that is a number beyond a 64-bit integer."""
    for key in VERSION_FIELDS:
        value = record.get(key)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and not INT64_MIN <= value <= INT64_MAX
        ):
            return key
    return None


def beyond_int64(value: Any) -> bool:
    """Whether an integer, or one of a dict's values, is beyond what both stores' integers hold."""
    if isinstance(value, int):
        return not INT64_MIN <= value <= INT64_MAX
    if isinstance(value, dict):
        return any(beyond_int64(item) for item in value.values())
    return False


# The fields of each saved row whose type holds integers (`int | None`, `dict[str, int]`).
_INTEGER_FIELDS = {
    model: tuple(f.name for f in dataclasses.fields(model) if "int" in str(f.type))
    for model in (CustomerHealth, MrrMovement, MrrSnapshot)
}


def unstorable(evaluation: CustomerEvaluation) -> str | None:
    """Why the store cannot hold this evaluation, else None. Only absurd input makes one (amounts near
    2**62 minor units, summed or multiplied): saving it failed its whole chunk, at every sync."""
    rows: list[Any] = [evaluation.health, *evaluation.movements, evaluation.snapshot]
    for row in rows:
        for name in _INTEGER_FIELDS[type(row)]:
            if beyond_int64(getattr(row, name)):
                return f"its {type(row).__name__} `{name}` is beyond a 64-bit integer"
    return None


def holds_nul(text: str | bytes) -> bool:
    """Whether JSON text may hold a NUL character (U+0000), which JSON writes escaped. Run on every
    input line: looking for a backslash first (one memchr, about 7 GB/s here; most lines have none)
    spares the escape's own search (0.85 GB/s: about 0.13 CPU s for the 1x book's 113 MB)."""
    if isinstance(text, bytes):
        return b"\\" in text and b"\\u0000" in text
    return "\\" in text and "\\u0000" in text


def without_nul(value: Any) -> Any:
    """Parsed JSON with each NUL in its strings and keys replaced by U+FFFD, as both stores keep a
    Stripe object: PostgreSQL's text cannot hold NUL (it refused the whole flush, and then the
    customer's health at every sync), and SQLite keeps the same so the stores agree. Stripe's own ids
    never hold it. Raises RecursionError for JSON nested beyond Python's recursion limit."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


@dataclasses.dataclass
class StoredBundle:
    """A customer's bundle as read from the store, its raw objects still JSON: `parsed` makes the
    engine's CustomerBundle. A refresh parses each customer's objects just before the engine reads
    them and lets them go right after: parsed a chunk at a time, they had left the CPU's caches by the
    time the engine got to them, and again by the time they were freed (about a tenth more CPU for
    parsing, evaluating and freeing the 2,000-customer book)."""

    customer_id: str
    lookups: dict[str, dict[str, Record]]  # the account's coupons, prices and products, by id
    customer: tuple[str | bytes, int] | None = None  # (raw object, deleted)
    # Each list stream's raw objects, in order.
    raw: dict[str, list[str | bytes]] = dataclasses.field(
        default_factory=lambda: {stream: [] for stream in CUSTOMER_LIST_STREAMS}
    )
    snapshots: list[MrrSnapshot] = dataclasses.field(default_factory=list)
    history: StoredHistory | None = None

    def parsed(self) -> CustomerBundle:
        """The bundle, its raw objects parsed (anew at each call: nothing here holds on to them)."""
        return CustomerBundle(
            customer_id=self.customer_id,
            customer=_parsed(*self.customer) if self.customer is not None else None,
            subscriptions=[orjson.loads(data) for data in self.raw["subscriptions"]],
            invoices=[orjson.loads(data) for data in self.raw["invoices"]],
            charges=[orjson.loads(data) for data in self.raw["charges"]],
            events=[orjson.loads(data) for data in self.raw["events"]],
            coupons=self.lookups["coupons"],
            prices=self.lookups["prices"],
            products=self.lookups["products"],
            snapshots=list(self.snapshots),
            history=self.history,
        )


def _parsed(data: str | bytes, deleted: int) -> Record:
    obj: Record = orjson.loads(data)
    if deleted:
        obj["deleted"] = True
    return obj


def _by_created_then_id(row: tuple[Any, ...]) -> tuple[int, str]:
    return (row[0] or 0, row[1])


def _chunks(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store(ABC):
    """The interface the Ingestor, the writer, the report and the webhook receiver use."""

    int_type = "INTEGER"
    # This connection's write transactions go before those of the process's other connections waiting
    # for theirs (SQLite, where they take turns; PostgreSQL writes them concurrently).
    urgent_writes = False

    def __init__(self, customer_ids_of: CustomerIdsOf | None = None) -> None:
        self._customer_ids_of = customer_ids_of
        self._tx_depth = 0
        self._tables: set[str] | None = None

    # --- backend primitives -------------------------------------------------------------------
    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _fetch_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows as plain tuples: the bulk readers' path (no per-row dict)."""

    # How a query selects a stream table's raw objects for `_fetch_raw_objects` (to parse them).
    _raw_objects = "data"

    def _fetch_raw_objects(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`_fetch_tuples` of a query whose last column is `_raw_objects`: what orjson parses, str or
        UTF-8 bytes (PostgreSQL's come as bytes: decoding them to str cost as much as orjson then
        spent encoding them back)."""
        return self._fetch_tuples(sql, params)

    @abstractmethod
    def _list_tables(self) -> set[str]: ...

    @abstractmethod
    def _list_columns(self, table: str) -> set[str]: ...

    @abstractmethod
    def close(self) -> None: ...

    def _lock_schema(self) -> None:  # noqa: B027 - a hook: only PostgreSQL needs it
        """Serialises schema changes between processes (PostgreSQL); SQLite's write lock does it."""

    def lock_customers(self, customer_ids: Sequence[str]) -> None:  # noqa: B027 - a hook
        """Inside a transaction: one writer per customer at a time until it ends (PostgreSQL takes
        per-customer advisory locks; SQLite's `BEGIN IMMEDIATE` already holds the database)."""

    def try_lock_customers(self, customer_ids: Sequence[str]) -> list[str]:
        """`lock_customers` without waiting: the customers now held (those no other transaction held)."""
        self.lock_customers(customer_ids)
        return sorted(set(customer_ids))

    def reader_opener(self) -> Callable[[], Store] | None:
        """Opens another connection to the same store, for a helper process to read from after a fork
        (None when the backend offers none: that refresh then stays in one process)."""
        return None

    # Orders rows of one table by insertion (a tie-breaker for equal timestamps).
    insertion_order = "rowid"
    # Whether each commit writes out every page it touched (SQLite's WAL): then fewer, larger commits
    # cost less, and the writer lets one commit cover several states when the input allows.
    commits_rewrite_pages = False
    # Whether two connections may each refresh their own customers at once (PostgreSQL); else a
    # refresh helper only reads, under the main connection's write lock (SQLite: one writer at a time).
    refreshes_in_parallel = False
    # Whether `batched` statements go to the server without waiting for it (PostgreSQL's pipeline): the
    # writer then reads on while the server commits a flush, instead of the two working in turns.
    flushes_pipelined = False

    def _ensure_insertion_order(self, table: str) -> None:  # noqa: B027 - a hook: SQLite has rowid
        """Gives `table` the column `insertion_order` names when the backend needs one."""

    def _raw_json_type(self) -> str:
        """The column type of the raw Stripe objects (PostgreSQL may name a faster compression)."""
        return "TEXT"

    # --- bulk writes (each backend sends them its fastest way) --------------------------------
    def _insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """INSERT INTO table (columns) each row."""
        placeholders = ", ".join("?" * len(columns))
        self._executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)

    def _delete_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """DELETE FROM table the rows whose `columns` equal each row's values."""
        where = " AND ".join(f"{column} = ?" for column in columns)
        self._executemany(f"DELETE FROM {table} WHERE {where}", rows)

    def _upsert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], key: str, update: str
    ) -> None:
        """INSERT INTO table (columns) each row, ON CONFLICT (key) DO UPDATE SET `update` (which may
        name `excluded` and end with a WHERE). The rows' keys must be distinct. A stream row's raw
        object comes as UTF-8 bytes (`Row.data`): stored as text, which SQLite would keep a BLOB."""
        placeholders = ", ".join("CAST(? AS TEXT)" if column == "data" else "?" for column in columns)
        self._executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
            f" ON CONFLICT ({key}) DO UPDATE SET {update}",
            rows,
        )

    # --- transactions -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A unit of work: committed on exit (then, and only then, may state be acknowledged)."""
        if self._tx_depth:
            self._tx_depth += 1
            try:
                yield
            finally:
                self._tx_depth -= 1
            return
        self._begin()
        self._tx_depth = 1
        try:
            yield
            self._commit()
        except BaseException:
            self._tables = None  # DDL may have been rolled back
            try:
                self._rollback()
            finally:
                self._tx_depth = 0
            raise
        self._tx_depth = 0

    def batched(self) -> AbstractContextManager[None]:
        """Around statements that read nothing: PostgreSQL sends them all at once (one round trip, not
        one each); an error then surfaces at the end and rolls the whole transaction back. Inside an
        open batch, the statements join it (the writer keeps one open while a flush commits)."""
        return nullcontext()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement (for parts keeping their own tables); `?` placeholders on both backends."""
        with self.transaction():
            self._execute(sql, params)

    def create_table(self, ddl: str) -> None:
        """Runs a `CREATE TABLE IF NOT EXISTS` for a part keeping its own table, serialised with every
        other schema change (two processes starting at once never collide)."""
        with self.transaction():
            self._lock_schema()
            self._execute(ddl)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Read rows as dicts; `?` placeholders on both backends."""
        return self._fetch(sql, params)

    # --- schema -------------------------------------------------------------------------------
    def tables(self) -> set[str]:
        """Every table in the store now (read from the catalog: another process may have made some)."""
        self._tables = self._list_tables()
        return set(self._tables)

    def has_table(self, table: str) -> bool:
        """Cached when present (tables are never dropped); a miss asks the catalog again, since
        another connection or process may have created it since."""
        return table in self.present_tables([table])

    def present_tables(self, tables: Iterable[str]) -> set[str]:
        """Those of `tables` that exist, asking the catalog at most once (a refresh reading tables a
        small account never had asked once per missing table and chunk)."""
        wanted = set(tables)
        if self._tables is None or not wanted <= self._tables:
            self._tables = self._list_tables()
        return wanted & self._tables

    def ensure_schema(self) -> None:
        """Creates the Perly tables (and adds columns the health model gained since)."""
        with self.transaction():
            self._lock_schema()
            self._create_from_dataclass(HEALTH_TABLE, CustomerHealth, primary_key="customer_id")
            self._create_from_dataclass(MOVEMENTS_TABLE, MrrMovement)
            self._create_from_dataclass(PLAN_CHANGES_TABLE, PlanChange)
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {SNAPSHOTS_TABLE} (customer_id TEXT NOT NULL, at TEXT NOT NULL,"
                " mrr_by_currency TEXT NOT NULL, cause TEXT)"
            )
            for table in (MOVEMENTS_TABLE, PLAN_CHANGES_TABLE, SNAPSHOTS_TABLE):
                self._ensure_insertion_order(table)
            # `mark` grows with every write, so a refresh clears only the marks it has seen.
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {DIRTY_TABLE} (customer_id TEXT PRIMARY KEY,"
                f" mark {self.int_type} NOT NULL DEFAULT 1)"
            )
            for table in (MOVEMENTS_TABLE, PLAN_CHANGES_TABLE, SNAPSHOTS_TABLE):
                self._execute(f"CREATE INDEX IF NOT EXISTS {table}_customer_idx ON {table} (customer_id)")
            for table in sorted(self._list_tables()):
                if table.startswith("stripe_") and "type" not in self._list_columns(table):
                    self._add_type_column(table)
            self._add_missing_partial_indexes()
        self._tables = None

    def _add_missing_partial_indexes(self) -> None:
        """Stream tables created before the clock (or bundle) indexes get them, in `ensure_schema`'s
        transaction: without, `mark_time_sensitive` reads every row at each sync. On SQLite a one-time
        build of 0.2-2.4 s at 10x the book (writers wait for it)."""
        present = self._list_tables()
        for stream in PARTIAL_INDEXED_STREAMS:
            if (table := table_for_stream(stream)) in present:
                for ddl in partial_index_ddls(table, stream).values():
                    self._execute(ddl)

    def _add_type_column(self, table: str) -> None:
        """A stream table written before the `type` column: added, and filled in from the stored JSON
        (a page of rows at a time, so a large table is never held in memory)."""
        self._execute(f"ALTER TABLE {table} ADD COLUMN type TEXT")
        after = ""
        while rows := self._fetch_tuples(
            f"SELECT id, data FROM {table} WHERE id > ? ORDER BY id LIMIT 1000", (after,)
        ):
            kinds = [
                (kind, row_id)
                for row_id, data in rows
                if isinstance(kind := orjson.loads(data).get("type"), str)
            ]
            if kinds:
                self._executemany(f"UPDATE {table} SET type = ? WHERE id = ?", kinds)
            after = rows[-1][0]

    def _create_from_dataclass(self, table: str, model: type, primary_key: str | None = None) -> None:
        columns = []
        for field in dataclasses.fields(model):
            column = f"{field.name} {_column_type(field.type, self.int_type)}"
            if field.name == primary_key:
                column += " PRIMARY KEY"
            columns.append(column)
        self._execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(columns)})")
        existing = self._list_columns(table)
        for field in dataclasses.fields(model):
            if field.name not in existing:
                self._execute(
                    f"ALTER TABLE {table} ADD COLUMN {field.name} {_column_type(field.type, self.int_type)}"
                )

    def ensure_stream_table(self, stream: str, stage: bool = False) -> str:
        table = table_for_stream(stream) + ("_stage" if stage else "")
        big = self.int_type
        if not self.has_table(table):
            with self.transaction():
                self._lock_schema()
                self._execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, updated {big} NOT NULL,"
                    f" deleted {big} NOT NULL DEFAULT 0, customer_id TEXT, created {big},"
                    f" status TEXT, type TEXT, data {self._raw_json_type()} NOT NULL, generation_id {big})"
                )
                self._execute(f"CREATE INDEX IF NOT EXISTS {table}_customer_idx ON {table} (customer_id)")
                for ddl in partial_index_ddls(table, stream).values():
                    self._execute(ddl)
            if self._tables is not None:  # (a rolled-back outer transaction forgets the cache)
                self._tables.add(table)
        return table

    def analyze_grown(self, written: Mapping[str, int]) -> None:  # noqa: B027 - a hook: only PostgreSQL
        """After writing `written[stream]` rows to each stream: gives the query planner the tables' new
        sizes where it needs them to use the indexes (PostgreSQL; SQLite's planner uses them anyway)."""

    def probe_writable(self) -> None:
        """Creates, writes and drops a probe table: proves the store accepts writes."""
        with self.transaction():
            self._execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id TEXT)")
            self._execute(f"INSERT INTO {PROBE_TABLE} (id) VALUES (?)", ("probe",))
            self._execute(f"DROP TABLE {PROBE_TABLE}")

    # --- records ------------------------------------------------------------------------------
    def customer_id_of(self, stream: str, record: Record) -> str | None:
        if self._customer_ids_of is not None:
            for customer_id in self._customer_ids_of(stream, record):
                return customer_id
        return customer_of(stream, record)

    def rows_from_records(
        self, stream: str, records: Iterable[Record], generation_id: int | None = None
    ) -> list[Row]:
        return [make_row(stream, r, self.customer_id_of(stream, r), generation_id) for r in records]

    def upsert_records(
        self, stream: str, records: Iterable[Record], generation_id: int | None = None, stage: bool = False
    ) -> set[str]:
        """Keeps the newer version per id; returns the customers of the rows written."""
        return self.upsert_rows(stream, self.rows_from_records(stream, records, generation_id), stage)

    def upsert_rows(self, stream: str, rows: Iterable[Row], stage: bool = False) -> set[str]:
        batch = latest_per_id(rows)
        if not batch:
            return set()
        table = self.ensure_stream_table(stream, stage)
        # A tombstone keeps the last full object (readers still see what was deleted) but marks it.
        update = (
            "updated = excluded.updated, deleted = excluded.deleted,"
            f" customer_id = COALESCE(excluded.customer_id, {table}.customer_id),"
            f" created = COALESCE(excluded.created, {table}.created),"
            f" status = CASE WHEN excluded.deleted = 1 THEN {table}.status ELSE excluded.status END,"
            f" type = CASE WHEN excluded.deleted = 1 THEN {table}.type ELSE excluded.type END,"
            f" data = CASE WHEN excluded.deleted = 1 THEN {table}.data ELSE excluded.data END,"
            f" generation_id = excluded.generation_id"
            f" WHERE excluded.updated >= {table}.updated"
        )
        with self.transaction():
            self._upsert_many(table, ROW_COLUMNS, batch, "id", update)
        return {row.customer_id for row in batch if row.customer_id}

    # --- staging (overwrite and truncate refreshes) -------------------------------------------
    def begin_stage(self, stream: str, generation_id: int | None) -> None:
        """Prepares `<table>_stage`. A stage left by an earlier attempt of the same generation is kept,
        so a resumed sync does not lose what it had committed; anything else is started afresh."""
        table = self.ensure_stream_table(stream, stage=True)
        with self.transaction():
            other = self._fetch(
                f"SELECT COUNT(*) AS n FROM {table} WHERE generation_id IS NULL OR generation_id <> ?",
                (generation_id if generation_id is not None else -1,),
            )
            if generation_id is None or other[0]["n"]:
                self._execute(f"DELETE FROM {table}")

    def swap_stage(self, stream: str) -> None:
        """Replaces the live table with the stage in one transaction (the live table is never seen
        empty), and marks dirty every customer on either side: their health may have changed."""
        live = self.ensure_stream_table(stream)
        stage = self.ensure_stream_table(stream, stage=True)
        with self.transaction():
            for table in (live, stage):
                self._mark_dirty_from(f"SELECT customer_id FROM {table} WHERE customer_id IS NOT NULL")
            self._execute(f"DELETE FROM {live}")
            columns = ", ".join(ROW_COLUMNS)
            self._execute(f"INSERT INTO {live} ({columns}) SELECT {columns} FROM {stage}")
            self._execute(f"DELETE FROM {stage}")

    # --- customers to recompute ---------------------------------------------------------------
    def mark_dirty(self, customer_ids: Iterable[str]) -> None:
        """Remembers customers whose health must be recomputed (survives a crash before refresh)."""
        ids = sorted(set(customer_ids))
        if ids:
            with self.transaction():
                self._upsert_many(
                    DIRTY_TABLE,
                    ("customer_id", "mark"),
                    [(c, 1) for c in ids],
                    "customer_id",
                    f"mark = {DIRTY_TABLE}.mark + 1",
                )

    def _mark_dirty_from(self, select_customer_ids: str, params: Sequence[Any] = ()) -> None:
        """`mark_dirty` for the customer ids a query selects, without bringing them into memory."""
        self._execute(
            f"INSERT INTO {DIRTY_TABLE} (customer_id, mark) SELECT DISTINCT found.customer_id, 1"
            # (SQLite needs a WHERE before ON CONFLICT in an INSERT ... SELECT)
            f" FROM ({select_customer_ids}) AS found WHERE found.customer_id IS NOT NULL"
            f" ON CONFLICT (customer_id) DO UPDATE SET mark = {DIRTY_TABLE}.mark + 1",
            params,
        )

    def dirty_customers(self) -> set[str]:
        return {str(r["customer_id"]) for r in self._fetch(f"SELECT customer_id FROM {DIRTY_TABLE}")}

    def dirty_page(self, after: str, limit: int) -> list[str]:
        """Up to `limit` dirty customers, in id order, after `after` (pages keep memory flat)."""
        sql = f"SELECT customer_id FROM {DIRTY_TABLE} WHERE customer_id > ? ORDER BY customer_id LIMIT ?"
        return [str(row[0]) for row in self._fetch_tuples(sql, (after, limit))]

    def dirty_marks(self, customer_ids: Sequence[str]) -> dict[str, int]:
        """The current mark of each of these customers that is dirty."""
        found: dict[str, int] = {}
        for chunk in _chunks(customer_ids):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT customer_id, mark FROM {DIRTY_TABLE} WHERE customer_id IN ({marks})"
            found.update((str(r["customer_id"]), int(r["mark"])) for r in self._fetch(sql, chunk))
        return found

    def clear_dirty(self, seen: Mapping[str, int]) -> None:
        """Clears the marks a refresh has seen; a customer written since (a higher mark) stays dirty."""
        if seen:
            with self.transaction():
                self._delete_many(DIRTY_TABLE, ("customer_id", "mark"), sorted(seen.items()))

    def mark_time_sensitive(self, as_of: datetime, lookback_days: int = 90) -> None:
        """Marks dirty the customers whose health can change with the clock alone: open invoices,
        trials, past-due or unpaid subscriptions, failed charges still inside a window, and any raised
        flag, risk or risk score (its signals, such as the 90-day MRR trend, expire)."""
        tables = self.tables()
        since = int(as_of.timestamp()) - lookback_days * 86400
        queries: list[tuple[str, tuple[Any, ...]]] = []
        for stream, (_, rows, since_created) in TIME_SENSITIVE_ROWS.items():
            table = table_for_stream(stream)
            if table in tables:
                select = f"SELECT customer_id FROM {table} WHERE {rows}"
                queries.append((f"{select} AND created >= ?", (since,)) if since_created else (select, ()))
        queries.append(
            (
                f"SELECT customer_id FROM {HEALTH_TABLE} WHERE deleted = 0 AND (payment_risk <> ?"
                " OR flag_payment_failures = 1 OR flag_downgrade = 1 OR flag_invoice_aging = 1"
                " OR flag_trial_expiring = 1 OR flag_mrr_contraction = 1 OR mrr_change_30d <> 0"
                " OR risk_score > 0 OR failed_payments_90d > 0)",
                ("none",),
            )
        )
        with self.transaction():
            for sql, params in queries:
                self._mark_dirty_from(sql, params)

    # --- bundles for the health engine --------------------------------------------------------
    def load_bundle(self, customer_id: str) -> CustomerBundle:
        return self.load_bundles([customer_id])[customer_id]

    def load_lookups(self) -> dict[str, dict[str, Record]]:
        """The account-wide coupons, prices and products by id (deleted ones flagged, still there:
        live subscriptions may reference them)."""
        lookups: dict[str, dict[str, Record]] = {}
        present = self.present_tables(table_for_stream(stream) for stream in LOOKUP_STREAMS)
        for stream in LOOKUP_STREAMS:
            table = table_for_stream(stream)
            rows = self._fetch_tuples(f"SELECT id, deleted, data FROM {table}") if table in present else []
            lookups[stream] = {str(row_id): _parsed(data, deleted) for row_id, deleted, data in rows}
        return lookups

    def load_records(self, stream: str, ids: Sequence[str]) -> dict[str, Record]:
        """The stored version of each of these records that the store holds, by id."""
        table = table_for_stream(stream)
        found: dict[str, Record] = {}
        if not self.has_table(table):
            return found
        for chunk in _chunks(sorted(set(ids))):
            sql = f"SELECT id, deleted, data FROM {table} WHERE id IN ({', '.join('?' * len(chunk))})"
            for row_id, deleted, data in self._fetch_tuples(sql, chunk):
                found[str(row_id)] = _parsed(data, deleted)
        return found

    def load_bundles(
        self, customer_ids: Iterable[str], lookups: dict[str, dict[str, Record]] | None = None
    ) -> dict[str, CustomerBundle]:
        """Bundles for many customers, parsed (see `load_stored_bundles`)."""
        return {c: stored.parsed() for c, stored in self.load_stored_bundles(customer_ids, lookups).items()}

    def load_stored_bundles(
        self, customer_ids: Iterable[str], lookups: dict[str, dict[str, Record]] | None = None
    ) -> dict[str, StoredBundle]:
        """Bundles for many customers, their raw objects not parsed yet: one query per table per chunk
        of customers (never per customer), rows as tuples."""
        ids = sorted(set(customer_ids))
        lookups = lookups if lookups is not None else self.load_lookups()
        bundles = {c: StoredBundle(c, lookups) for c in ids}
        customers = table_for_stream("customers")
        list_tables = [(s, table_for_stream(s)) for s in CUSTOMER_LIST_STREAMS]
        present = self.present_tables([customers, *(t for _, t in list_tables)])
        list_tables = [(s, t) for s, t in list_tables if t in present]
        has_customers = customers in present
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            if has_customers:
                sql = f"SELECT id, deleted, {self._raw_objects} FROM {customers} WHERE id IN ({marks})"
                for row_id, deleted, data in self._fetch_raw_objects(sql, chunk):
                    bundles[str(row_id)].customer = (data, deleted)
            for stream, table in list_tables:
                # Sorted here, not in SQL: a database sort would copy every raw object through a sorter.
                sql = (
                    f"SELECT created, id, customer_id, {self._raw_objects} FROM {table}"
                    f" WHERE customer_id IN ({marks}) AND {BUNDLE_ROWS.get(stream, 'deleted = 0')}"
                )
                rows = self._fetch_raw_objects(sql, chunk)
                rows.sort(key=_by_created_then_id)
                lists = {c: bundles[c].raw[stream] for c in chunk}
                for _created, _id, customer_id, data in rows:
                    lists[customer_id].append(data)
            sql = (
                f"SELECT customer_id, at, mrr_by_currency, cause FROM {SNAPSHOTS_TABLE}"
                f" WHERE customer_id IN ({marks}) ORDER BY at, {self.insertion_order}"
            )
            for customer_id, at, mrr, cause in self._fetch_tuples(sql, chunk):
                bundles[str(customer_id)].snapshots.append(
                    MrrSnapshot(
                        at=parse_iso(str(at)), mrr_by_currency=orjson.loads(mrr), cause=str(cause or "")
                    )
                )
            for customer_id, history in self._stored_histories(chunk).items():
                bundles[customer_id].history = history
        return bundles

    def _stored_histories(self, customer_ids: Sequence[str]) -> dict[str, StoredHistory]:
        """The stored movements and plan changes of these customers (oldest first), and the `as_of`
        of the evaluation that last stored them (their health row's)."""
        marks = ", ".join("?" * len(customer_ids))
        rows: dict[str, dict[str, list[Any]]] = {}
        for table, model in ((MOVEMENTS_TABLE, MrrMovement), (PLAN_CHANGES_TABLE, PlanChange)):
            names = [f.name for f in dataclasses.fields(model)]
            sql = (
                f"SELECT {', '.join(names)} FROM {table} WHERE customer_id IN ({marks})"
                f" ORDER BY at, {self.insertion_order}"
            )
            for values in self._fetch_tuples(sql, customer_ids):
                row = dict(zip(names, values, strict=True))
                row["at"] = parse_iso(str(row["at"]))
                rows.setdefault(str(row["customer_id"]), {}).setdefault(table, []).append(model(**row))
        sql = f"SELECT customer_id, as_of FROM {HEALTH_TABLE} WHERE customer_id IN ({marks})"
        until = {str(c): parse_iso(str(at)) for c, at in self._fetch_tuples(sql, customer_ids) if at}
        return {
            customer_id: StoredHistory(
                tuple(rows.get(customer_id, {}).get(MOVEMENTS_TABLE, [])),
                tuple(rows.get(customer_id, {}).get(PLAN_CHANGES_TABLE, [])),
                until.get(customer_id),
            )
            for customer_id in set(rows) | set(until)
        }

    # --- health results -----------------------------------------------------------------------
    def save_results(
        self, evaluations: Sequence[CustomerEvaluation], snapshots: Sequence[tuple[str, MrrSnapshot]]
    ) -> None:
        """Upserts health rows and appends the new movements, plan changes and snapshots, in one
        transaction. Stored movements and plan changes are never rewritten or deleted (contract
        section 7): the engine hands over only what happened after them."""
        if not evaluations and not snapshots:
            return
        health_fields = [f.name for f in dataclasses.fields(CustomerHealth)]
        updates = ", ".join(f"{name} = excluded.{name}" for name in health_fields if name != "customer_id")
        with self.transaction():
            if evaluations:
                self._upsert_many(
                    HEALTH_TABLE,
                    health_fields,
                    [[_db_value(getattr(e.health, name)) for name in health_fields] for e in evaluations],
                    "customer_id",
                    updates,
                )
                self._insert_dataclasses(
                    MOVEMENTS_TABLE, MrrMovement, [m for e in evaluations for m in e.movements]
                )
                self._insert_dataclasses(
                    PLAN_CHANGES_TABLE, PlanChange, [p for e in evaluations for p in e.plan_changes]
                )
            if snapshots:
                self._insert_many(
                    SNAPSHOTS_TABLE,
                    ("customer_id", "at", "mrr_by_currency", "cause"),
                    [(c, iso(s.at), _db_value(s.mrr_by_currency), s.cause) for c, s in snapshots],
                )

    def _insert_dataclasses(self, table: str, model: type, items: Sequence[Any]) -> None:
        if not items:
            return
        names = [f.name for f in dataclasses.fields(model)]
        self._insert_many(table, names, [[_db_value(getattr(item, n)) for n in names] for item in items])
