"""The one write path: Stripe records into the store, then health recomputed for whom it may change.

Used by the Airbyte writer and the webhook receiver alike. Customers touched by a write are marked
dirty in the same transaction as the records, so a crash before `refresh` loses no recomputation:
the next `refresh_pending` picks them up. `refresh` is safe with concurrent writers (a sync and the
webhook receiver, in one process or several): see its docstring.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from destination_perly.health.model import CustomerBundle, CustomerEvaluation, HealthConfig, MrrSnapshot
from destination_perly.health.mrr import (
    items_in_part,
    known_discounts,
    unknown_discount_ids,
    with_known_discounts,
    with_stored_items,
)
from destination_perly.health.values import as_list
from destination_perly.store.base import Record, Row, Store, make_row, unstorable
from stripe_vocabulary import customer_of

logger = logging.getLogger("airbyte")

Evaluate = Callable[[CustomerBundle, HealthConfig, datetime], CustomerEvaluation]
# Customers evaluated per transaction: bounds the parsed objects held at once, and how long one
# refresh holds SQLite's write lock (a webhook write waits at most about one chunk).
REFRESH_CHUNK = 200
# Dirty customers read from the ledger at once by `refresh_pending` (each page is one `refresh`).
REFRESH_PAGE = 10_000
# A refresh of at least this many customers evaluates half of each chunk in a helper process (the
# second core), when the Ingestor is allowed one and the store can open another connection.
HELPER_MIN_CUSTOMERS = 400


def customer_ids_of(stream: str, record: Record) -> list[str]:
    """Every customer a record concerns: its owner (`stripe_vocabulary.customer_of`), if any."""
    owner = customer_of(stream, record)
    return [owner] if owner else []


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Parsed Stripe objects are trees freed by reference counting, but creating hundreds of thousands
    of them makes the cyclic collector rescan what the chunk holds again and again (about a sixth of a
    refresh's CPU). Paused for one chunk only, so any cycles it made are still collected soon after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class RefreshResult:
    refreshed: int = 0
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # `skip_busy`: held by another refresh, left as they are


@dataclass
class Outcome:
    """One customer's evaluation, ready to save: `snapshot` only when MRR changed since the last one;
    `error` (a traceback) when the engine failed and the customer stays pending."""

    customer_id: str
    evaluation: CustomerEvaluation | None = None
    snapshot: MrrSnapshot | None = None
    error: str | None = None


class Reported(NamedTuple):
    """What the main process logs and counts of a saved outcome (a helper that saved sends only this)."""

    customer_id: str
    error: str | None
    problems: tuple[str, ...]


def reported(outcomes: Iterable[Outcome]) -> list[Reported]:
    return [Reported(o.customer_id, o.error, tuple(getattr(o.evaluation, "problems", ()))) for o in outcomes]


def evaluate_customers(
    store: Store, customer_ids: Sequence[str], as_of: datetime, evaluate: Evaluate, config: HealthConfig
) -> list[Outcome]:
    """Loads and evaluates these customers (no writes: the caller saves)."""
    stored = store.load_stored_bundles(customer_ids, store.load_lookups())
    outcomes: list[Outcome] = []
    for customer_id in customer_ids:
        # Parsed just before it is evaluated, let go (at the next one) right after (see StoredBundle).
        bundle = stored[customer_id].parsed()
        try:
            evaluation = evaluate(bundle, config, as_of)
        except Exception:  # one customer's bad data must not stop the others
            outcomes.append(Outcome(customer_id, error=traceback.format_exc()))
            continue
        why = unstorable(evaluation)
        if why is not None:
            outcomes.append(Outcome(customer_id, error=why))
            continue
        last = bundle.snapshots[-1] if bundle.snapshots else None
        changed = last is None or last.mrr_by_currency != evaluation.snapshot.mrr_by_currency
        outcomes.append(Outcome(customer_id, evaluation, evaluation.snapshot if changed else None))
    return outcomes


def _helper_loop(
    conn: Connection, open_reader: Callable[[], Store], evaluate: Evaluate, config: HealthConfig
) -> None:
    """The helper process, on its own connection: evaluates the customers it is sent and answers with
    their outcomes (`saves` false), or refreshes them itself, in its own transaction holding them, as
    `Ingestor.refresh` would, and answers with what the main process logs of them (`saves` true)."""
    store = open_reader()
    ingestor = Ingestor(store, config, evaluate)
    try:
        while (request := conn.recv()) is not None:
            customer_ids, as_of, saves, dirty_only = request
            try:
                if saves:
                    conn.send(ingestor._refresh_alone(customer_ids, as_of, dirty_only))
                else:
                    with cyclic_gc_paused():
                        conn.send(evaluate_customers(store, customer_ids, as_of, evaluate, config))
            except Exception:  # e.g. a locked or missing table: the main process does this share itself
                conn.send(traceback.format_exc())
    finally:
        store.close()
        conn.close()


# A chunk takes the helper well under a second; a helper silent this long is stuck, not slow.
HELPER_TIMEOUT_SECONDS = 120.0
# Chunks sent to a helper refreshing on its own, ahead of its answers: it never waits for the next.
HELPER_QUEUED_CHUNKS = 2


class RefreshHelper:
    """A forked process that takes part of a refresh, on its own connection. Where the store takes one
    writer at a time (SQLite), it loads and evaluates part of each chunk, only after the main process
    has taken the lock on the chunk's customers, so what it reads is what the main process would (no
    newer write can commit before the main process saves), and the main process saves. Where it takes
    several (`Store.refreshes_in_parallel`), it refreshes whole chunks itself, holding their customers
    as the main process does its own, so neither waits for the other."""

    def __init__(self, open_reader: Callable[[], Store], evaluate: Evaluate, config: HealthConfig) -> None:
        # Anything buffered for stdout must go out once, from here, not again from the child.
        sys.stdout.flush()
        sys.stderr.flush()
        context = multiprocessing.get_context("fork")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=_helper_loop, args=(child_end, open_reader, evaluate, config), daemon=True
        )
        # The child's collector must not walk (and so copy, page by page) the heap it shares with us.
        gc.freeze()
        try:
            self._process.start()
        finally:
            gc.unfreeze()
        child_end.close()

    def start(
        self, customer_ids: Sequence[str], as_of: datetime, saves: bool = False, dirty_only: bool = False
    ) -> None:
        """Sends it work; requests are answered in order, one `finish` each."""
        try:
            self._conn.send((list(customer_ids), as_of, saves, dirty_only))
        except OSError:  # it has already stopped: `finish` reports it
            pass

    def answered(self) -> bool:
        """Whether the answer to the oldest request is there (or the helper has stopped)."""
        try:
            return self._conn.poll()
        except OSError:
            return True

    def finish(self) -> Any:
        """The answer to the oldest request (outcomes, or what a saving helper reports of them), or None
        when the helper failed (logged; the caller does the work itself)."""
        try:
            if not self._conn.poll(HELPER_TIMEOUT_SECONDS):
                logger.warning("the refresh helper process hangs; evaluating in the main process")
                self._process.kill()
                return None
            answer: Any = self._conn.recv()
        except (EOFError, OSError):
            logger.warning("the refresh helper process stopped; evaluating in the main process")
            return None
        if isinstance(answer, str):
            logger.warning("the refresh helper failed; evaluating in the main process: %s", answer)
            return None
        return answer

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


class Ingestor:
    def __init__(
        self,
        store: Store,
        config: HealthConfig,
        evaluate: Evaluate | None = None,
        customer_ids: Callable[[str, Record], list[str]] = customer_ids_of,
        refresh_chunk: int = REFRESH_CHUNK,
        helper_min_customers: int | None = None,
    ) -> None:
        """`helper_min_customers`: use a helper process for refreshes at least this big (None: never;
        only for single-threaded callers such as the Airbyte writer, since it forks)."""
        self.store = store
        self.refresh_chunk = refresh_chunk
        self.config = config
        self._evaluate = evaluate
        self._customer_ids = customer_ids
        self.helper_min_customers = helper_min_customers

    @property
    def evaluate(self) -> Evaluate:
        if self._evaluate is None:
            from destination_perly.health import evaluate_customer

            self._evaluate = evaluate_customer
        return self._evaluate

    def prepare(self, stream: str, record: Record, generation_id: int | None = None) -> tuple[Row, list[str]]:
        """The row to store and every customer it touches (the writer buffers these)."""
        ids = self._customer_ids(stream, record)
        return make_row(stream, record, ids[0] if ids else None, generation_id), ids

    def upsert(
        self, stream: str, records: Iterable[Record], generation_id: int | None = None, stage: bool = False
    ) -> set[str]:
        """Stores records (newer `updated` wins) and returns the customers they touch."""
        return self.upsert_streams({stream: records}, generation_id, stage)

    def upsert_streams(
        self,
        records: Mapping[str, Iterable[Record]],
        generation_id: int | None = None,
        stage: bool = False,
    ) -> set[str]:
        """`upsert` of several streams in one transaction, a statement per stream, their customers
        marked dirty in one statement (so concurrent writers take those marks in one order)."""
        rows: dict[str, list[Row]] = {}
        touched: set[str] = set()
        with self.store.transaction():  # the stored versions read below are the ones overwritten
            for stream in sorted(records):
                batch = records[stream]
                if stream == "subscriptions":
                    batch = self.with_stored_details(batch)
                rows[stream] = []
                for record in batch:
                    row, ids = self.prepare(stream, record, generation_id)
                    rows[stream].append(row)
                    touched.update(ids)
            self.upsert_rows(rows, touched, stage)
        return touched

    def touched_by(self, records: Mapping[str, Iterable[Record]]) -> set[str]:
        """The customers `upsert_streams` of these records marks dirty."""
        return {
            c
            for stream, batch in records.items()
            for record in batch
            for c in self._customer_ids(stream, record)
        }

    def with_stored_details(self, subscriptions: Iterable[Record]) -> list[Record]:
        """Subscriptions as an event's payload renders them, completed from their stored version so
        that a webhook does not make MRR forget what the payload leaves out until the next sync:
        - each discount they (or their items) name by id only is replaced by the object of that id in
          the stored version (read with the discounts expanded; a discount never changes but for its
          `end`). An id the stored version does not have is stored as it is: the health engine looks
          it up in the customer's discount events, else names it in the health row's `limitations`;
        - items listed in part (`items.has_more`: a payload lists the first 20) get the stored
          version's later items when it lists the same first items in the same order (see
          `with_stored_items`); otherwise MRR leaves the rest out and the health row says so."""
        subscriptions = list(subscriptions)
        named = [
            sub["id"]
            for sub in subscriptions
            if isinstance(sub.get("id"), str) and (unknown_discount_ids(sub) or items_in_part(sub))
        ]
        if not named:
            return subscriptions
        stored = self.store.load_records("subscriptions", named)
        completed: list[Record] = []
        for sub in subscriptions:
            if sub.get("id") in stored:
                earlier = stored[sub["id"]]
                sub = with_stored_items(with_known_discounts(sub, known_discounts(earlier)), earlier)
            if unknown := unknown_discount_ids(sub):
                logger.warning(
                    "subscription %s names discounts %s by id only and its stored version does not have"
                    " them: its MRR leaves them out until a discount event or the next sync tells them",
                    sub.get("id"),
                    ", ".join(unknown),
                )
            if items_in_part(sub):
                logger.warning(
                    "subscription %s lists only its first %d items and its stored version cannot complete"
                    " them: its MRR leaves the others out until the next sync reads them",
                    sub.get("id"),
                    len(as_list(sub.get("items"))),
                )
            completed.append(sub)
        return completed

    def upsert_rows(self, rows: Mapping[str, list[Row]], touched: set[str], stage: bool = False) -> None:
        """One transaction: each stream's rows and the dirty marks of their customers."""
        with self.store.batched(), self.store.transaction():
            for stream, stream_rows in rows.items():
                self.store.upsert_rows(stream, stream_rows, stage)
            self.store.mark_dirty(touched)

    def refresh_pending(self, as_of: datetime, include_time_sensitive: bool = True) -> RefreshResult:
        """Recomputes every dirty customer, after marking dirty every customer whose health can change
        with the clock (unless told not to). Reads the ledger a page at a time, so memory does not
        grow with the account; a customer that fails stays dirty for the next round."""
        if include_time_sensitive:
            self.store.mark_time_sensitive(as_of, self.config.policy.uncollectible_window_days)
        result = RefreshResult()
        after = ""
        while page := self.store.dirty_page(after, REFRESH_PAGE):
            done = self.refresh(page, as_of)
            result.refreshed += done.refreshed
            result.failed.extend(done.failed)
            after = page[-1]
        return result

    def refresh(
        self,
        customer_ids: Iterable[str],
        as_of: datetime,
        dirty_only: bool = False,
        skip_busy: bool = False,
    ) -> RefreshResult:
        """Recomputes and stores health, movements, plan changes and a snapshot when MRR changed.

        Each chunk is read, evaluated and saved in ONE transaction holding its customers (SQLite:
        the write lock; PostgreSQL: per-customer advisory locks), so a concurrent writer such as the
        webhook receiver can never have a newer evaluation overwritten by one computed from older
        data: whoever saves last read last. A helper process, when used, reads inside that window.

        `dirty_only` skips the customers no longer marked dirty once they are held: a refresh that
        read after their last write has saved them already (another receiver process, a sync).
        `skip_busy` leaves out (in `busy`) the customers another transaction holds instead of waiting
        for them: for a refresh that is only helping the one holding them."""
        ids = sorted(set(customer_ids))
        result = RefreshResult()
        helper = self._start_helper(len(ids))
        if helper is not None and self.store.refreshes_in_parallel and not skip_busy:  # (it always waits)
            self._refresh_in_parallel(ids, as_of, result, helper, dirty_only)
            return result
        try:
            for start in range(0, len(ids), self.refresh_chunk):
                chunk = ids[start : start + self.refresh_chunk]
                with self.store.transaction(), cyclic_gc_paused():
                    if skip_busy:
                        held = self.store.try_lock_customers(chunk)
                        result.busy.extend(sorted(set(chunk) - set(held)))
                        chunk = held
                    else:
                        self.store.lock_customers(chunk)
                    done = helper is not None and self._refresh_chunk(
                        chunk, as_of, result, helper, dirty_only
                    )
                    if not done:
                        if helper is not None:  # it failed: this chunk and the rest in this process
                            helper.close()
                            helper = None
                        self._refresh_chunk(chunk, as_of, result, None, dirty_only)
        finally:
            if helper is not None:
                helper.close()
        return result

    def _refresh_in_parallel(
        self, ids: list[str], as_of: datetime, result: RefreshResult, helper: RefreshHelper, dirty_only: bool
    ) -> None:
        """The helper and this process each refresh their own chunks, of half the usual size (each holds
        as much at once as with a shared chunk): the helper always has the next one waiting, this
        process takes the others. If the helper fails, this process does its chunks too."""
        size = max(1, self.refresh_chunk // 2)
        waiting = deque(ids[start : start + size] for start in range(0, len(ids), size))
        sent: deque[list[str]] = deque()  # the helper's chunks, answered in order
        working: RefreshHelper | None = helper
        try:
            while waiting or sent:
                while working is not None and len(sent) < HELPER_QUEUED_CHUNKS and waiting:
                    sent.append(waiting.popleft())
                    working.start(sent[-1], as_of, saves=True, dirty_only=dirty_only)
                if working is not None and sent and (not waiting or working.answered()):
                    outcomes = working.finish()
                    if outcomes is None:  # not saved (rolled back): this process does them all
                        working.close()
                        working = None
                        waiting.extendleft(reversed(sent))
                        sent.clear()
                        continue
                    sent.popleft()
                    self._report(outcomes, result)
                elif waiting:
                    self._report(self._refresh_alone(waiting.popleft(), as_of, dirty_only), result)
        finally:
            if working is not None:
                working.close()

    def _refresh_alone(self, chunk: list[str], as_of: datetime, dirty_only: bool) -> list[Reported]:
        """Refreshes a chunk in one transaction holding its customers, with no helper."""
        with self.store.transaction(), cyclic_gc_paused():
            self.store.lock_customers(chunk)
            outcomes = self._evaluate_and_save(chunk, as_of, None, dirty_only)
        assert outcomes is not None  # (only a helper fails)
        return outcomes

    def _start_helper(self, customers: int) -> RefreshHelper | None:
        if self.helper_min_customers is None or customers < self.helper_min_customers:
            return None
        open_reader = self.store.reader_opener()
        if open_reader is None:
            return None
        return RefreshHelper(open_reader, self.evaluate, self.config)

    def _refresh_chunk(
        self,
        chunk: list[str],
        as_of: datetime,
        result: RefreshResult,
        helper: RefreshHelper | None,
        dirty_only: bool = False,
    ) -> bool:
        """Evaluates and saves one chunk; False (nothing saved) when the helper failed."""
        outcomes = self._evaluate_and_save(chunk, as_of, helper, dirty_only)
        if outcomes is None:
            return False
        self._report(outcomes, result)
        return True

    def _evaluate_and_save(
        self, chunk: list[str], as_of: datetime, helper: RefreshHelper | None, dirty_only: bool
    ) -> list[Reported] | None:
        """Inside the transaction holding the chunk: evaluates and saves it; None (nothing saved) when the
        helper failed."""
        seen_marks = self.store.dirty_marks(chunk)
        if dirty_only:
            chunk = [customer_id for customer_id in chunk if customer_id in seen_marks]
            if not chunk:
                return []
        theirs: list[str] = chunk[: len(chunk) // 2] if helper is not None else []
        if helper is not None:
            helper.start(theirs, as_of)  # only now: the lock on the chunk is held
        outcomes = evaluate_customers(self.store, chunk[len(theirs) :], as_of, self.evaluate, self.config)
        if helper is not None:
            helped = helper.finish()
            if helped is None:
                return None
            outcomes = list(helped) + outcomes
        failed = {o.customer_id for o in outcomes if o.error is not None}
        evaluations = [o.evaluation for o in outcomes if o.evaluation is not None]
        snapshots = [(o.customer_id, o.snapshot) for o in outcomes if o.snapshot is not None]
        with self.store.batched():
            self.store.save_results(evaluations, snapshots)
            self.store.clear_dirty({c: m for c, m in seen_marks.items() if c not in failed})
        return reported(outcomes)

    def _report(self, outcomes: list[Reported], result: RefreshResult) -> None:
        """Logs a saved chunk's failures and problems (a helper's too: it never writes to stdout) and
        counts them in `result`."""
        failed: list[str] = []
        for outcome in outcomes:
            if outcome.error is not None:
                logger.error(
                    "health evaluation failed for customer %s; it stays pending\n%s",
                    outcome.customer_id,
                    outcome.error,
                )
                failed.append(outcome.customer_id)
            for problem in outcome.problems:
                logger.warning("customer %s: %s", outcome.customer_id, problem)
        result.failed.extend(sorted(failed))
        result.refreshed += len(outcomes) - len(failed)
