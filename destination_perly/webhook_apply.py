"""Applies verified webhook events to the Perly store through the destination's write path.

Two threads, each with its own store connection:
- the writer stores an event's records and claims its id in the ledger table, in ONE transaction
  (so a duplicate, a retry or the same event at another receiver process does nothing the second
  time, and a crash never leaves half an event). The HTTP answer waits for this commit only.
- the refresher recomputes health for the customers the writes touched (batched under bursts) and
  marks their events applied. Events stored but not yet applied are found again at start-up. Every
  `clock_refresh_seconds` it also recomputes the customers whose health changes with the clock alone
  (invoice aging, trial ends, failures leaving their window), so flags stay current between syncs.
  With `help_other_receivers` (PostgreSQL: several receivers share the store), a refresher with
  nothing of its own to do refreshes the events another receiver stored and left waiting: the
  connections a burst comes over may all land on one process, and the other's core then does half
  the work anyway.

A connection the server dropped (a PostgreSQL restart or failover) is opened again by the next attempt,
so the receiver recovers by itself; `probe` checks the writer's connection for `/healthz`.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import orjson

from destination_perly.store.base import Store
from destination_perly.store.postgres import is_unreachable
from destination_perly.webhook_events import EventPlan

log = logging.getLogger("perly.webhooks")

LEDGER_TABLE = "perly_webhook_events"
# Transient store failures (a lock held by a sync, a PostgreSQL deadlock) are retried this often.
WRITE_ATTEMPTS = 5
REFRESH_ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.05
REFRESH_BATCH_MAX_EVENTS = 500
# Under a stream of events, a refresh starts at most this long after the previous one began: it then
# covers every event queued meanwhile, a customer with several of them once, and shares a refresh's
# fixed costs (transactions, lookups, round trips) among them. An event after a quiet spell is
# refreshed at once. Bounds the wait this adds to POST -> health, well under the 250 ms target.
REFRESH_INTERVAL_SECONDS = 0.05
# Events stored and waiting for their refresh above which the writer waits (up to BACKLOG_WAIT_SECONDS)
# for the refresher: in a burst faster than health can follow, the answers (and so Stripe's next
# deliveries) slow down instead of health lagging further and further behind the writes.
REFRESH_BACKLOG_MAX_EVENTS = 100
BACKLOG_WAIT_SECONDS = 1.0
# Events stored in one transaction at most, when a burst queued them up.
WRITE_BATCH_MAX_EVENTS = 100
# Customers the receiver's Ingestor refreshes per transaction: bounds how long a refresh holds
# SQLite's write lock, so a webhook write (which goes first between chunks) or a sync's waits at most
# one small chunk: at 50, writes waited up to 50 ms in a burst; at 20, 20 ms.
REFRESH_CHUNK_CUSTOMERS = 20
# How often the receiver recomputes the clock-sensitive customers (and any left dirty).
CLOCK_REFRESH_SECONDS = 900.0
# Helping other receivers: a refresher with nothing of its own to do looks for events stored and not
# applied yet, and takes the newest first (their own refresher works from the oldest). While it finds
# some it looks again at once; each look that finds none doubles the wait before the next, from
# HELP_POLL_SECONDS up to HELP_POLL_MAX_SECONDS (an idle receiver costs a few indexed reads a second,
# and a burst is noticed within that). After a failed attempt it waits HELP_PAUSE_SECONDS.
HELP_POLL_SECONDS = 0.05
HELP_POLL_MAX_SECONDS = 0.2
# Events taken per look: the look is repeated at once while it finds some, and each ledger row read
# costs CPU (the owner's refresher is working through the older ones meanwhile).
HELP_BATCH_MAX_EVENTS = 100
HELP_PAUSE_SECONDS = 30.0

Clock = Callable[[], datetime]
T = TypeVar("T")
# A write-queue job asking the writer to check its store connection (for /healthz).
PROBE = "probe"
# Attempts of a probe: the first may find the connection dropped, the second opens a new one.
PROBE_ATTEMPTS = 2


def wall_clock() -> datetime:
    return datetime.now(UTC)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ingestor(Protocol):
    def upsert_streams(self, records: Mapping[str, list[dict[str, Any]]]) -> set[str]: ...

    def touched_by(self, records: Mapping[str, list[dict[str, Any]]]) -> set[str]: ...

    def refresh(
        self, customer_ids: Iterable[str], as_of: datetime, dirty_only: bool = False, skip_busy: bool = False
    ) -> Any: ...

    def refresh_pending(self, as_of: datetime) -> Any: ...


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # stored now; health follows on the refresher
    DUPLICATE = "duplicate"  # this event id was stored before: nothing done


class EventLedger:
    """`perly_webhook_events`: one row per event id received, with when it was stored and applied."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def ensure(self) -> None:
        big = self.store.int_type
        self.store.create_table(
            f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (event_id TEXT PRIMARY KEY,"
            f" event_type TEXT NOT NULL, object_id TEXT, event_created {big} NOT NULL, customer_ids TEXT,"
            f" received_ms {big} NOT NULL, applied_ms {big})"
        )
        # The events waiting for their refresh, found without reading the whole ledger (any DDL is
        # serialised like a table's).
        self.store.create_table(
            f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_pending ON {LEDGER_TABLE} (received_ms)"
            " WHERE applied_ms IS NULL"
        )

    def claim(self, plans: list[EventPlan], customers: Mapping[str, set[str]], received_ms: int) -> set[str]:
        """Inserts the events' rows (ids distinct) in one statement; returns the ids that were not there
        already (the caller's transaction decides). In id order, so that two receivers claiming the
        same ids wait on each other in one order, never in a cycle."""
        rows = sorted(plans, key=lambda plan: plan.event_id)
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(rows))
        params = [
            value
            for plan in rows
            for value in (
                plan.event_id,
                plan.event_type,
                plan.object_id,
                plan.created,
                orjson.dumps(sorted(customers[plan.event_id])).decode(),
                received_ms,
            )
        ]
        claimed = self.store.query(
            f"INSERT INTO {LEDGER_TABLE} (event_id, event_type, object_id, event_created, customer_ids,"
            f" received_ms) VALUES {values} ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            params,
        )
        return {str(row["event_id"]) for row in claimed}

    def mark_applied(self, event_ids: list[str], applied_ms: int) -> int:
        """Returns how many were not marked already (by another receiver)."""
        marked = 0
        with self.store.transaction():
            for start in range(0, len(event_ids), 500):
                chunk = event_ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                marked += len(
                    self.store.query(
                        f"UPDATE {LEDGER_TABLE} SET applied_ms = ?"
                        f" WHERE event_id IN ({marks}) AND applied_ms IS NULL RETURNING event_id",
                        (applied_ms, *chunk),
                    )
                )
        return marked

    def pending(self) -> list[tuple[str, set[str]]]:
        """Events stored but whose health refresh never finished (a crash, or a refresh that failed)."""
        rows = self.store.query(
            f"SELECT event_id, customer_ids FROM {LEDGER_TABLE} WHERE applied_ms IS NULL ORDER BY received_ms"
        )
        return _event_customers(rows)

    def newest_pending(self, limit: int) -> list[tuple[str, set[str]]]:
        """Up to `limit` events stored and not applied yet, newest first."""
        rows = self.store.query(
            f"SELECT event_id, customer_ids FROM {LEDGER_TABLE} WHERE applied_ms IS NULL"
            " ORDER BY received_ms DESC LIMIT ?",
            (limit,),
        )
        return _event_customers(rows)

    def get(self, event_id: str) -> dict[str, Any] | None:
        rows = self.store.query(f"SELECT * FROM {LEDGER_TABLE} WHERE event_id = ?", (event_id,))
        return rows[0] if rows else None


def _event_customers(rows: list[dict[str, Any]]) -> list[tuple[str, set[str]]]:
    return [(str(r["event_id"]), set(orjson.loads(r["customer_ids"] or "[]"))) for r in rows]


class Connection:
    """One thread's store and what is built on it, opened again after the server dropped it."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        make_ingestor: Callable[[Store], Ingestor],
        urgent_writes: bool = False,
    ) -> None:
        """`urgent_writes`: the writer's (an HTTP answer waits for its commits), before the refresher's."""
        self._open_store = open_store
        self._make_ingestor = make_ingestor
        self._urgent_writes = urgent_writes
        self.lost = False
        self._open()

    def _open(self) -> None:
        self.store = self._open_store()
        self.store.urgent_writes = self._urgent_writes
        self.ingestor = self._make_ingestor(self.store)
        self.ledger = EventLedger(self.store)

    def run(self, action: Callable[[Connection], T]) -> T:
        """`action` on this connection, reopened first if the last one found it dropped (while the
        server is still down, the reopening fails and so does this attempt)."""
        if self.lost:
            self.close()
            self._open()
            self.lost = False
            log.info("reconnected to the store")
        try:
            return action(self)
        except Exception as error:
            self.lost = is_unreachable(error)
            raise

    def close(self) -> None:
        try:
            self.store.close()
        except Exception as error:  # a dropped connection may fail to close: it is gone anyway
            log.debug("closing the store connection failed: %s", error)


def _retry(what: str, attempts: int, action: Callable[[], Any]) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:
            if attempt == attempts:
                raise
            delay = RETRY_BASE_SECONDS * 2 ** (attempt - 1)
            log.warning(
                "%s failed (attempt %d/%d, retrying in %.2fs): %s", what, attempt, attempts, delay, error
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _queued_behind(first: T, jobs: queue.Queue[T | None], limit: int) -> tuple[list[T], bool]:
    """`first` and what is queued behind it, `limit` items at most; True when the stop mark (None)
    was among them."""
    batch = [first]
    while len(batch) < limit:
        try:
            more = jobs.get_nowait()
        except queue.Empty:
            break
        if more is None:
            return batch, True
        batch.append(more)
    return batch, False


class WebhookProcessor:
    """Owns the writer and refresher threads. `submit` returns a Future of the write's Outcome."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        make_ingestor: Callable[[Store], Ingestor],
        clock: Clock = wall_clock,
        clock_refresh_seconds: float | None = CLOCK_REFRESH_SECONDS,
        help_other_receivers: bool = False,
    ) -> None:
        """`clock_refresh_seconds`: None never recomputes the clock-sensitive customers (the syncs do).
        `help_other_receivers`: when idle, refresh the events other receivers on this store stored and
        have not applied yet (for a store that several processes write at once: PostgreSQL)."""
        self._open_store = open_store
        self._make_ingestor = make_ingestor
        self._clock = clock
        self._clock_refresh_seconds = clock_refresh_seconds
        self._help_other_receivers = help_other_receivers
        self._writes: queue.Queue[tuple[EventPlan | str, Future[Any]] | None] = queue.Queue()
        self._refreshes: queue.Queue[tuple[str, set[str]] | None] = queue.Queue()
        self._refreshes_taken = threading.Condition()
        self._idle = threading.Condition()
        self._busy = 0  # events submitted or recovered whose refresh has not finished
        self._applied: set[str] = set()
        self.counts = {
            "accepted": 0,
            "duplicate": 0,
            "applied": 0,
            "write_failed": 0,
            "refresh_failed": 0,
            "ignored": 0,
            "wrong_api_version": 0,  # ignored, and worth a look: the endpoint renders another version
            "helped": 0,  # events another receiver stored (found pending in the ledger) this one applied
        }
        self._threads: list[threading.Thread] = []
        self._started = False

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Opens both connections (creating the ledger table) before returning; raises if it cannot."""
        ready: list[threading.Event] = []
        errors: list[BaseException] = []
        for name, loop in (
            ("perly-webhook-writer", self._write_loop),
            ("perly-webhook-refresher", self._refresh_loop),
        ):
            started = threading.Event()
            thread = threading.Thread(target=loop, args=(started, errors), name=name, daemon=True)
            thread.start()
            ready.append(started)
            self._threads.append(thread)
            # The writer creates the ledger table; the refresher reads it: open them in turn.
            if not started.wait(timeout) or errors:
                self.stop()
                raise errors[0] if errors else TimeoutError(f"{name} did not start in {timeout}s")
        self._started = True

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes queued writes and refreshes, then closes the connections."""
        if not self._threads:
            return
        self._writes.put(None)
        self._threads[0].join(timeout)
        self._refreshes.put(None)
        for thread in self._threads[1:]:
            thread.join(timeout)
        self._threads = []
        self._started = False

    # --- API for the HTTP layer and tests -----------------------------------------------------
    def submit(self, plan: EventPlan) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        if not self._started:
            future.set_exception(RuntimeError("the webhook processor is not running"))
            return future
        with self._idle:
            self._busy += 1
        self._writes.put((plan, future))
        return future

    def probe(self) -> Future[bool]:
        """Checks the writer's store connection (reconnecting if it was dropped), in turn with writes."""
        future: Future[bool] = Future()
        if not self._started:
            future.set_exception(RuntimeError("the webhook processor is not running"))
            return future
        self._writes.put((PROBE, future))
        return future

    def note_ignored(self, plan: EventPlan) -> None:
        with self._idle:
            self.counts["ignored"] += 1
            self.counts["wrong_api_version"] += plan.wrong_api_version

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every submitted event is stored and its customers' health refreshed."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def wait_applied(self, event_id: str, timeout: float = 10.0) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: event_id in self._applied, timeout)

    def stats(self) -> dict[str, int]:
        with self._idle:
            return {**self.counts, "in_progress": self._busy}

    def _done(self, event_ids: list[str], applied: bool) -> None:
        with self._idle:
            self._busy -= len(event_ids)
            if applied:
                self._applied.update(event_ids)
                self.counts["applied"] += len(event_ids)
            self._idle.notify_all()

    # --- writer -------------------------------------------------------------------------------
    def _write_loop(self, started: threading.Event, errors: list[BaseException]) -> None:
        try:
            connection = Connection(self._open_store, self._make_ingestor, urgent_writes=True)
            _retry("creating the webhook ledger", WRITE_ATTEMPTS, connection.ledger.ensure)
            recovered = connection.ledger.pending()
        except BaseException as error:
            errors.append(error)
            started.set()
            return
        with self._idle:
            self._busy += len(recovered)
        for item in recovered:
            self._refreshes.put(item)
        if recovered:
            log.info(
                "refreshing health for %d stored events not applied before the last stop", len(recovered)
            )
        started.set()
        try:
            stopping = False
            while not stopping and (job := self._writes.get()) is not None:
                with self._refreshes_taken:
                    self._refreshes_taken.wait_for(
                        lambda: self._refreshes.qsize() <= REFRESH_BACKLOG_MAX_EVENTS, BACKLOG_WAIT_SECONDS
                    )
                # Under a burst, the events queued meanwhile are stored in one transaction: a commit
                # costs more than storing an event.
                jobs, stopping = _queued_behind(job, self._writes, WRITE_BATCH_MAX_EVENTS)
                writes: list[tuple[EventPlan, Future[Outcome]]] = []
                for kind, future in jobs:
                    if isinstance(kind, EventPlan):
                        writes.append((kind, future))
                    else:
                        self._probe(connection, future)
                if writes:
                    self._write_jobs(connection, writes)
        finally:
            connection.close()

    def _write_jobs(self, connection: Connection, jobs: list[tuple[EventPlan, Future[Outcome]]]) -> None:
        # False when the HTTP side gave up waiting (and answered 503) before the write began: the event
        # is still stored, so Stripe's retry finds it done.
        waited_for = [future.set_running_or_notify_cancel() for _, future in jobs]
        plans = [plan for plan, _ in jobs]
        results: list[tuple[Outcome, set[str]] | BaseException] = []
        if len(plans) > 1:
            try:
                results = list(connection.run(functools.partial(self._write_all, plans=plans)))
            except Exception as error:  # each on its own, so that one bad event fails alone
                log.warning("storing %d events together failed, storing each alone: %s", len(plans), error)
        if not results:
            results = [self._write_alone(connection, plan) for plan in plans]
        for (plan, future), waited, result in zip(jobs, waited_for, results, strict=True):
            if isinstance(result, BaseException):
                with self._idle:
                    self.counts["write_failed"] += 1
                self._done([plan.event_id], applied=False)
                if waited:
                    future.set_exception(result)
                continue
            outcome, customers = result
            with self._idle:
                self.counts[outcome.value] += 1
            if outcome is Outcome.ACCEPTED:
                self._refreshes.put((plan.event_id, customers))
            else:
                self._done([plan.event_id], applied=False)
            if waited:
                future.set_result(outcome)

    def _write_alone(
        self, connection: Connection, plan: EventPlan
    ) -> tuple[Outcome, set[str]] | BaseException:
        try:
            result: tuple[Outcome, set[str]] = _retry(
                f"storing event {plan.event_id}",
                WRITE_ATTEMPTS,
                functools.partial(connection.run, functools.partial(self._write_all, plans=[plan])),
            )[0]
        except Exception as error:
            log.error("could not store event %s (%s): %s", plan.event_id, plan.event_type, error)
            return error
        return result

    @staticmethod
    def _write_all(connection: Connection, plans: list[EventPlan]) -> list[tuple[Outcome, set[str]]]:
        """Stores the events in ONE transaction, in a few statements for all of them (a statement costs
        more than storing an event): their ledger rows, then each stream's records (newer `updated`
        wins, as one by one), then the dirty marks. An id stored before, or earlier in the batch, is
        a duplicate and writes nothing."""
        store, ingestor, ledger = connection.store, connection.ingestor, connection.ledger
        firsts: dict[str, EventPlan] = {}
        for plan in plans:
            firsts.setdefault(plan.event_id, plan)
        touched = {event_id: ingestor.touched_by(plan.records) for event_id, plan in firsts.items()}
        with store.transaction():
            claimed = ledger.claim(list(firsts.values()), touched, now_ms())
            new = [plan for plan in firsts.values() if plan.event_id in claimed]
            records: dict[str, list[dict[str, Any]]] = {}
            for plan in new:  # in arrival order: of two versions with one `updated`, the later wins
                for stream, stream_records in plan.records.items():
                    records.setdefault(stream, []).extend(stream_records)
            if records:
                ingestor.upsert_streams(records)
        return [
            (Outcome.ACCEPTED, touched[plan.event_id])
            if plan.event_id in claimed and firsts[plan.event_id] is plan
            else (Outcome.DUPLICATE, set())
            for plan in plans
        ]

    @staticmethod
    def _probe(connection: Connection, future: Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            _retry(
                "checking the store",
                PROBE_ATTEMPTS,
                lambda: connection.run(lambda c: c.store.query("SELECT 1")),
            )
        except Exception as error:
            future.set_exception(error)
        else:
            future.set_result(True)

    # --- refresher ----------------------------------------------------------------------------
    def _refresh_loop(self, started: threading.Event, errors: list[BaseException]) -> None:
        try:
            connection = Connection(self._open_store, self._make_ingestor)
        except BaseException as error:
            errors.append(error)
            started.set()
            return
        started.set()
        stopping = False
        interval = self._clock_refresh_seconds
        next_clock_refresh = time.monotonic() + (interval or 0.0)
        next_help, help_wait = time.monotonic(), HELP_POLL_SECONDS
        last_refresh = 0.0
        try:
            while not stopping:
                try:
                    wait = None if interval is None else max(0.0, next_clock_refresh - time.monotonic())
                    if self._help_other_receivers:
                        wait = help_wait if wait is None else min(wait, help_wait)
                    item = self._refreshes.get(timeout=wait)
                except queue.Empty:
                    if interval is not None and time.monotonic() >= next_clock_refresh:
                        self._refresh_clock_sensitive(connection)
                        next_clock_refresh = time.monotonic() + interval
                    elif self._help_other_receivers and time.monotonic() >= next_help:
                        helped = self._help(connection)
                        if helped is None:
                            next_help = time.monotonic() + HELP_PAUSE_SECONDS
                        # Our own events still go first: `help_wait` is how long the queue is watched.
                        idle_wait = min(max(2 * help_wait, HELP_POLL_SECONDS), HELP_POLL_MAX_SECONDS)
                        help_wait = 0.0 if helped else idle_wait
                    continue
                if item is None:
                    break
                time.sleep(max(0.0, last_refresh + REFRESH_INTERVAL_SECONDS - time.monotonic()))
                last_refresh = time.monotonic()
                batch, stopping = _queued_behind(item, self._refreshes, REFRESH_BATCH_MAX_EVENTS)
                with self._refreshes_taken:
                    self._refreshes_taken.notify_all()
                self._refresh_batch(connection, batch)
        finally:
            connection.close()

    def _help(self, connection: Connection) -> int | None:
        """Refreshes the events in the ledger not applied yet (another receiver's, behind under a burst;
        or ours whose refresh failed), newest first. Returns how many it applied; None when it failed
        (logged)."""
        try:
            pending = connection.run(lambda c: c.ledger.newest_pending(HELP_BATCH_MAX_EVENTS))
        except Exception as error:
            log.warning("could not look for events other receivers left waiting: %s", error)
            return None
        return self._refresh_batch(connection, pending, own=False) if pending else 0

    def _refresh_clock_sensitive(self, connection: Connection) -> None:
        try:
            result = _retry(
                "refreshing clock-sensitive health",
                REFRESH_ATTEMPTS,
                lambda: connection.run(lambda c: c.ingestor.refresh_pending(self._clock())),
            )
        except Exception as error:  # the next round, or the next sync, tries again
            log.error("clock-sensitive health refresh failed: %s", error)
            return
        log.info("recomputed %d clock-sensitive customers", result.refreshed)

    def _refresh_batch(
        self, connection: Connection, batch: list[tuple[str, set[str]]], own: bool = True
    ) -> int | None:
        """Refreshes the batch's customers a group at a time, in the order their events arrived, each
        group in one transaction with the applied marks of the events it completes: under a backlog,
        the first events of a big batch do not wait for the last. `own`: events this process stored
        (its counts and waiters follow them); else pending ones found in the ledger. Returns how many
        it marked applied; None when a group failed."""
        if self._help_other_receivers:
            batch = self._without_customers_done(connection, batch)
        waiting = list(batch)
        refreshed: set[str] = set()
        busy: set[str] = set()  # when helping: customers another refresh held, left to it
        total = 0
        for group in _customer_groups(batch, REFRESH_CHUNK_CUSTOMERS):
            refreshed.update(group)
            ready = [(event_id, ids) for event_id, ids in waiting if ids <= refreshed]
            waiting = [(event_id, ids) for event_id, ids in waiting if not ids <= refreshed]
            try:
                applied, newly_applied, held_elsewhere = _retry(
                    f"refreshing health for {len(group)} customers",
                    REFRESH_ATTEMPTS,
                    functools.partial(
                        connection.run,
                        functools.partial(
                            self._refresh_group, group=group, ready=ready, busy=busy, helping=not own
                        ),
                    ),
                )
            except Exception as error:
                # These events stay "stored, not applied" in the ledger: the next start (or sync)
                # refreshes them.
                failed = [event_id for event_id, _ in ready + waiting]
                log.error("health refresh failed for events %s: %s", ", ".join(failed[:5]), error)
                if own:
                    with self._idle:
                        self.counts["refresh_failed"] += len(failed)
                    self._done(failed, applied=False)
                return None
            busy.update(held_elsewhere)
            total += len(applied)
            if own:
                self._done(applied, applied=True)
            else:
                with self._idle:
                    self.counts["helped"] += newly_applied
        return total

    @staticmethod
    def _without_customers_done(
        connection: Connection, batch: list[tuple[str, set[str]]]
    ) -> list[tuple[str, set[str]]]:
        """The batch without the customers no longer dirty: with receivers helping each other, many are
        done by the time a refresher comes to them (a mark is cleared only by a refresh that read
        after the write that set it). One read here spares a transaction per group of them; an event
        left with no customers is only marked applied."""
        customers = sorted({customer for _, ids in batch for customer in ids})
        try:
            dirty = connection.run(lambda c: c.store.dirty_marks(customers))
        except Exception as error:  # the groups' own transactions find out, one by one
            log.warning("could not read which customers are still dirty: %s", error)
            return batch
        return [(event_id, {customer for customer in ids if customer in dirty}) for event_id, ids in batch]

    def _refresh_group(
        self,
        connection: Connection,
        group: list[str],
        ready: list[tuple[str, set[str]]],
        busy: set[str],
        helping: bool,
    ) -> tuple[list[str], int, list[str]]:
        """Refreshes the group and marks applied the `ready` events (those it completes) whose
        customers were not `busy` in another refresh, in one transaction. Returns those events, how
        many of them no other receiver had marked, and the group's customers another refresh held
        (only when `helping`: then it does not wait)."""
        held_elsewhere: list[str] = []
        with connection.store.transaction():
            if group:
                # Another receiver process (or a sync) may have refreshed some since our writes.
                result = connection.ingestor.refresh(group, self._clock(), dirty_only=True, skip_busy=helping)
                held_elsewhere = result.busy
            left = busy.union(held_elsewhere)
            applied = [event_id for event_id, ids in ready if not ids & left]
            newly_applied = connection.ledger.mark_applied(applied, now_ms())
        return applied, newly_applied, held_elsewhere


def _customer_groups(batch: list[tuple[str, set[str]]], size: int) -> list[list[str]]:
    """The batch's customers, each once, in the order their events arrived, `size` at a time (one
    group, empty, when the events concern no customer)."""
    ordered = list(dict.fromkeys(c for _, ids in batch for c in sorted(ids)))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)] or [[]]
