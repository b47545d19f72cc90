"""SQLite backend: one file, WAL mode, one writer connection per process.

A webhook receiver may write to the same file from another process: write transactions start with
`BEGIN IMMEDIATE` (the write lock is taken up front, so no transaction fails half-way on an upgrade)
and wait on `busy_timeout`; a lock that outlasts it is retried a few times before giving up.

The connections of one process to one file (the webhook receiver's writer and refresher threads)
first take turns among themselves (`Turns`), an urgent connection before the others: waiting on
SQLite's lock instead, the receiver's writer slept in the busy handler's steps (up to 25 ms) while its
refresher took the lock again at once, about a third of a burst.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from destination_perly.private_files import create_private_file, make_private_dirs, tighten_existing
from destination_perly.store.base import CustomerIdsOf, Store, StoreError

BUSY_TIMEOUT_MS = 30_000
LOCK_RETRIES = 5


class Turns:
    """One write transaction at a time among a process's connections to one file; a connection
    marked `urgent_writes` goes before the others waiting. A turn not given within `timeout` (a
    transaction stuck in another thread) is not waited for: SQLite's own lock then decides."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._taken = False
        self._urgent_waiting = 0

    def take(self, urgent: bool, timeout: float) -> bool:
        with self._changed:
            self._urgent_waiting += urgent
            try:
                taken = self._changed.wait_for(
                    lambda: not self._taken and (urgent or not self._urgent_waiting), timeout
                )
            finally:
                self._urgent_waiting -= urgent
            self._taken = self._taken or taken
            return taken

    def give_back(self) -> None:
        with self._changed:
            self._taken = False
            self._changed.notify_all()


_turns_by_file: dict[str, Turns] = {}
_turns_guard = threading.Lock()


def _turns_for(path: Path) -> Turns:
    """The turns of this process's connections to `path`."""
    with _turns_guard:
        return _turns_by_file.setdefault(str(path.resolve()), Turns())


def _no_turns_in_a_forked_child() -> None:
    """A forked child (the refresh helper) opens its own connections: none of its parent's turns, nor a
    guard a parent thread may have held at the fork, comes along."""
    global _turns_guard
    _turns_guard = threading.Lock()
    _turns_by_file.clear()


os.register_at_fork(after_in_child=_no_turns_in_a_forked_child)


class SqliteStore(Store):
    int_type = "INTEGER"
    # At 10x the book a commit per 500 records wrote the file about five times over (random ids touch
    # most index pages each time); PostgreSQL does better with the small batches (measured).
    commits_rewrite_pages = True

    def __init__(
        self, path: str | Path, customer_ids_of: CustomerIdsOf | None = None, read_only: bool = False
    ) -> None:
        """`read_only`: an existing file opened for reading only (the report): never created, and its
        settings (page size, journal mode) left as they are."""
        super().__init__(customer_ids_of)
        self.path = Path(path)
        if str(path) != ":memory:" and not read_only:
            parent = self.path.parent
            if not parent.is_dir():
                try:
                    make_private_dirs(parent)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the directory {parent} for the SQLite file: {exc}"
                    ) from exc
            try:
                # The store holds names and emails: owner-only. SQLite gives its -wal and -shm files
                # the database file's mode, so creating the file first covers them too.
                create_private_file(self.path)
            except OSError as exc:
                raise StoreError(f"cannot create the SQLite file {path}: {exc}") from exc
        if str(path) != ":memory:":  # a store made before Perly created it owner-only: made so now
            tighten_existing(self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
        try:
            self._conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro" if read_only else str(path),
                uri=read_only,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Rows are whole Stripe objects (often several KB): 32 KB pages need fewer overflow pages,
            # a smaller file and about a tenth less CPU for a bulk load than the 4 KB default. Only a
            # new file takes it (before WAL is on); an existing one keeps its page size.
            if not read_only:
                self._conn.execute("PRAGMA page_size = 32768")
                self._conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit survives a process crash; only an OS crash can lose the last ones.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            # Sorts and temporary indexes in memory; a 64 MB page cache (negative: KiB) for bulk loads.
            self._conn.execute("PRAGMA temp_store = MEMORY")
            self._conn.execute("PRAGMA cache_size = -65536")
            # Checkpoint the WAL every ~128 MB rather than 4 MB: a bulk load pays far fewer fsyncs, and
            # an index page written by many batches is copied to the file once per checkpoint (at 10x
            # the book, about 6% less of the writer's CPU than 32 MB); the file is cut back to 128 MB
            # after a checkpoint so it never stays larger.
            page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {128 * 1024 * 1024 // page_size}")
            self._conn.execute(f"PRAGMA journal_size_limit = {128 * 1024 * 1024}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite file {path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        self._turns = None if read_only or str(path) == ":memory:" else _turns_for(self.path)
        self._has_turn = False

    def reader_opener(self) -> Callable[[], Store] | None:
        if str(self.path) == ":memory:":
            return None
        path, customer_ids_of = self.path, self._customer_ids_of
        return lambda: SqliteStore(path, customer_ids_of)

    def _begin(self) -> None:
        if self._turns is not None:
            self._has_turn = self._turns.take(self.urgent_writes, BUSY_TIMEOUT_MS / 1000)
        try:
            for attempt in range(LOCK_RETRIES):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc) or attempt == LOCK_RETRIES - 1:
                        raise
                    time.sleep(0.05 * 2**attempt)
        except BaseException:
            self._give_back_turn()
            raise

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        finally:
            self._give_back_turn()

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            self._give_back_turn()

    def _give_back_turn(self) -> None:
        if self._has_turn and self._turns is not None:
            self._has_turn = False
            self._turns.give_back()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, tuple(params))

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self._conn.execute(sql, tuple(params)).fetchall()]

    # The raw objects' UTF-8 bytes as stored: read as text, each was decoded to str and orjson then
    # encoded most of them back (half the book's rows hold non-ASCII text); a fifth less CPU to fetch
    # and parse a refresh's bundles.
    _raw_objects = "CAST(data AS BLOB)"

    def _fetch_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, tuple(params)).fetchall()

    def _list_tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(r[0]) for r in rows}

    def _list_columns(self, table: str) -> set[str]:
        return {str(r[1]) for r in self._conn.execute(f"PRAGMA table_info({table})").fetchall()}

    def close(self) -> None:
        self._conn.close()
