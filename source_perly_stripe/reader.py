"""The read engine: backfill by `created` windows, replay changes through the events list, all on one
thread pool; the generator thread turns worker results into Airbyte messages in a safe order.

Order guarantees: a worker puts a window's pages on the queue before it reports the window done, and
the generator emits a stream's STATE only after the records it covers, so state never gets ahead of
data."""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from stripe_vocabulary import API_VERSION, CUSTOMER_OWNED_STREAMS, customer_of, tombstone

from . import protocol as ab
from .check import missing_core_message
from .client import (
    StripeAuthError,
    StripeError,
    StripeNotFoundError,
    StripePermissionError,
    StripeResponseError,
    StripeTransientError,
)
from .idsketch import IdSketch
from .reconcile import RECONCILIATIONS, Reconciliation, filtered_params, lists_everything
from .streams import (
    CORE_STREAMS,
    EVENTS,
    MAX_EVENT_TYPES_PER_REQUEST,
    OBJECT_STREAMS,
    Change,
    Params,
    StreamDef,
    change_from_event,
    event_types_for,
    lacks_expansion,
    lifecycle_step,
)
from .windows import DAY, Interval, gaps, initial_windows, merge, plan_cut

STRIPE_LAUNCH = 1_293_840_000  # 2011-01-01T00:00:00Z: nothing in Stripe is older
EVENT_RETENTION = 30 * DAY
# A cursor this close to the retention edge is treated as expired: events near the edge may
# disappear while we page through them.
RETENTION_MARGIN = 3_600
# Events are read from a little before the cursor: an event can become visible in the list a
# moment after its `created` second.
EVENTS_OVERLAP = 600
# For the same reason, objects created since the last sync are listed from a little before its end.
LIST_OVERLAP = 600
PAGE_SIZE = 100
# The lists long wherever there are customers (an invoice and a charge a month each, at least) begin a
# first read as windows cut at these ages, so that the first round trip (the probe and one page per
# window) carries 9 requests instead of 5, as many as fit in it at 90 requests/s (see `_begin_early`).
EARLY_CUTS: dict[str, tuple[int, ...]] = {"invoices": (7 * DAY, 60 * DAY), "charges": (7 * DAY, 60 * DAY)}
EVENTS_KEY = "__events__"
# Messages (mostly pages, up to 2 MB each in memory) waiting for the generator thread. Before `read`
# consumes them, while the CDK is imported after `begin` (see early.py), more may wait: the import
# takes 1-2 s, in which the budget lets 90-180 pages in, and a full queue stops every request until
# it ends (through the CLI at 5,000 customers, 34-49 requests sent in the second after the first).
QUEUED_WHILE_READ = 64
QUEUED_BEFORE_READ = 192

# A message built when it is yielded (see `begin`).
Deferred = Callable[[], "ab.AirbyteMessage"]


class Client(Protocol):
    def get(self, path: str, params: Any = ()) -> dict[str, Any]: ...

    def server_now(self) -> int: ...


@dataclass
class ReadSettings:
    start: int = STRIPE_LAUNCH
    workers: int = 20
    # Windows read at once, across streams: at ~120 ms a round trip, 12 to 14 fill Stripe's live limit
    # of 100 requests/s; more would only add window ends (partial pages).
    readers: int = 14
    # A window is cut for a free reader only where each piece holds at least this many pages: the
    # partial page every window ends on then costs at most ~4% more requests than full pages only.
    pages_per_cut: int = 16
    # At the end of a read, windows are cut into pieces of a quarter of that, so that the last ones
    # finish together; each cut costs half a page, so at most one per this many pages read (+0.25%).
    pages_per_end_cut: int = 200
    state_interval_seconds: float = 1.0


@dataclass
class StreamRun:
    """What one stream does in this sync and how far it got."""

    stream: StreamDef
    incremental: bool
    # "backfill" (windows), "events" (replay changes), "events_stream", "reconcile" (without events:
    # what was created since, plus the lists of what can still change; see reconcile.py)
    mode: str = "backfill"
    lower: int = 0
    upper: int = 0
    done: list[Interval] = field(default_factory=list)
    events_from: int = 0
    requests: int = 0
    previous_full_requests: int | None = None
    pending: int = 0
    records: int = 0
    failed: BaseException | None = None
    finished: bool = False
    last_state_at: float = 0.0
    covered_at_start: int = 0  # seconds of the created range already read when this sync began
    # Without events: the ids of the objects that can still change, as this sync lists them (`sketch`),
    # as they were at the last sync (`previous`), and those of the listed that existed then (`present`).
    rule: Reconciliation | None = None
    sketch: IdSketch | None = None
    previous: IdSketch | None = None
    present: IdSketch | None = None
    previous_upper: int = 0
    watched_ids: set[str] = field(default_factory=set)
    departures_checked: bool = False


def _log(level: str, text: str) -> ab.AirbyteMessage:
    """A LOG message; `level` is a name of the protocol's levels ("INFO", "WARN"...)."""
    return ab.AirbyteMessage(type=ab.Type.LOG, log=ab.AirbyteLogMessage(level=ab.Level(level), message=text))


def _estimate(stream: str, rows: int) -> ab.AirbyteMessage:
    """How many records a stream should emit in this sync, for the platform's progress display."""
    return ab.AirbyteMessage(
        type=ab.Type.TRACE,
        trace=ab.AirbyteTraceMessage(
            type=ab.TraceType.ESTIMATE,
            emitted_at=time.time() * 1000,
            estimate=ab.AirbyteEstimateTraceMessage(
                name=stream, type=ab.EstimateType.STREAM, row_estimate=rows
            ),
        ),
    )


_MODE_NAMES = {
    "backfill": "a read of every object by created windows",
    "events": "the changes the events list names",
    "events_stream": "the events list",
    "reconcile": "what can still change, without events",
}


def _tombstone(stream: StreamDef, change: Change, updated: int) -> dict[str, Any]:
    return tombstone(stream.name, change.object_id, change.customer, updated)


class SyncReader:
    def __init__(
        self,
        client: Client,
        streams: list[tuple[StreamDef, bool]],
        states: dict[str, dict[str, Any]],
        settings: ReadSettings,
        now_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self._client = client
        self._selected = streams
        self._states = states
        self._settings = settings
        self._now_ms = now_ms
        # Pages waiting for the generator thread (bounded: memory; see `QUEUED_BEFORE_READ`).
        self._out: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=QUEUED_BEFORE_READ)
        self._began = False
        # Stripe's clock at the probe (`_probe`): the upper end of every backfill. Windows begun
        # before the probe answers wait for it (`_stripe_now`).
        self._now = 0
        self._probed = threading.Event()
        self._begun_early: set[str] = set()  # streams whose first window went out with the probe
        self._planned: list[Deferred] = []
        self._runs: dict[str, StreamRun] = {}
        self._lock = threading.Lock()
        self._outstanding = 0
        self._stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._sublists: ThreadPoolExecutor | None = None  # sublists of one page, fetched together
        self._changes: dict[str, dict[str, Change]] = {}
        # customer id -> the newest invoice event about them in this read (see `_event_object`)
        self._invoiced_at: dict[str, int] = {}
        self._events_pending = 0
        self._events_failed: BaseException | None = None
        self._events_denied: StripePermissionError | None = None
        self._events_done = False
        self._windows_in_flight = 0  # windows being read, across streams (for `readers`)
        self._pages_read = 0
        self._end_cuts = 0  # cuts into smaller pieces at the end of the read
        self._open_windows: set[object] = set()  # windows being read whose far past is unknown
        self._reading_alone: set[object] = set()  # those of them that keep their far past for now
        # Records per second of each stream read by windows, as its latest page measured it (None: no
        # page yet). See `_keeps_far_past`.
        self._densities: dict[str, float | None] = {}
        # See `_plan_unlisted_customers`: the customers that subscriptions, invoices and charges name
        # and the customers list did not give (Stripe lists only live customers: these were deleted,
        # maybe before any event we can read). Each is fetched once before customers completes.
        self._named_customers: set[str] | None = None
        self._listed_customers: set[str] = set()
        self._unlisted_carried = False  # named by an interrupted sync's state: nothing more is collected
        self._unlisted: list[str] = []  # being fetched; kept in the state should a fetch fail
        self._fetched_early: set[str] = set()  # see `_fetch_unlisted_early`
        self._unlisted_in_state: set[str] = set()  # what the last customers state carried

    # ---- planning ------------------------------------------------------------------------------

    def _probe(self) -> int:
        """One cheap request: it gives the server's clock and tells whether events are readable."""
        wants_events = any(s is EVENTS or incremental for s, incremental in self._selected)
        path = EVENTS.path if wants_events else self._selected[0][0].path
        try:
            self._client.get(path, [("limit", 1)])
        except StripePermissionError as denied:
            if wants_events:
                self._events_denied = denied
        return int(self._client.server_now())

    def _plan(self, now: int) -> Iterator[Deferred]:
        s = self._settings
        runs: dict[str, StreamRun] = {}
        for stream, incremental in self._selected:
            state = self._states.get(stream.name, {}) if incremental else {}
            # A stream begun early (`_begin_early`) keeps its run: its window is counted in it.
            run = self._runs.get(stream.name) or StreamRun(stream=stream, incremental=incremental)
            run.lower, run.upper = s.start, now + 1
            run.previous_full_requests = state.get("full_read_requests")
            runs[stream.name] = run
            cursor = state.get(stream.cursor_field)
            if isinstance(cursor, int) and cursor > now:
                yield partial(
                    _log,
                    "WARN",
                    f"{stream.name}: the saved cursor ({cursor}) is ahead of Stripe's clock ({now}), "
                    "a clock skew; it is taken as Stripe's now so that no later change is skipped.",
                )
                cursor = now
            if stream is EVENTS:
                run.mode = "events_stream"
                oldest_available = now - EVENT_RETENTION
                if isinstance(cursor, int) and cursor < oldest_available + RETENTION_MARGIN:
                    yield partial(
                        _log,
                        "WARN",
                        f"events: the saved cursor ({cursor}) is older than Stripe's 30-day event "
                        "retention; events between it and the retention edge can no longer be read.",
                    )
                start = cursor - EVENTS_OVERLAP if isinstance(cursor, int) else s.start
                run.events_from = max(start, oldest_available)
                continue
            backfill = state.get("backfill")
            retention_edge = now - EVENT_RETENTION + RETENTION_MARGIN
            run.rule = RECONCILIATIONS.get(stream.name) if incremental and self._events_denied else None
            if run.rule is not None and run.rule.watched is not None:
                run.sketch = IdSketch()  # the next sync reconciles against it
            previous = IdSketch.from_state(state.get("watch"))
            replays_events = self._events_denied is None
            if isinstance(backfill, dict) and replays_events and int(backfill["upper"]) < retention_edge:
                # The changes made since that backfill began are no longer in the events list.
                yield partial(
                    _log,
                    "WARN",
                    f"{stream.name}: the interrupted backfill began more than 30 days ago; Stripe keeps "
                    "events for 30 days only, so it starts again from the beginning to lose no change.",
                )
            elif isinstance(backfill, dict):
                run.lower, run.upper = int(backfill["lower"]), int(backfill["upper"])
                run.done = merge([(int(a), int(b)) for a, b in backfill.get("done", [])])
                run.requests = int(backfill.get("requests", 0))
                run.covered_at_start = sum(b - a for a, b in run.done)
                if run.sketch is not None:
                    run.sketch = previous  # the listed ids of what was read before the interruption
                yield partial(
                    _log, "INFO", f"{stream.name}: resuming the backfill; {self._describe_done(run)}."
                )
            elif (
                isinstance(cursor, int)
                and run.rule is not None
                and (run.rule.watched is None or previous is not None)
            ):
                run.mode = "reconcile"
                run.previous, run.previous_upper = previous, cursor + 1
                run.present = IdSketch() if previous is not None else None
                last_records = state.get("records")
                if isinstance(last_records, int):
                    yield partial(_estimate, stream.name, last_records)  # about as many as the last time
            elif isinstance(cursor, int) and replays_events and cursor < retention_edge:
                yield partial(
                    _log,
                    "WARN",
                    f"{stream.name}: the last sync was more than 30 days ago (cursor {cursor}); Stripe "
                    "keeps events for 30 days only, so this stream is read again in full instead of "
                    "replaying events, to lose no change.",
                )
            elif isinstance(cursor, int) and replays_events:
                run.mode = "events"
                run.events_from = cursor - EVENTS_OVERLAP
                self._changes[stream.name] = {}
            # Otherwise (first sync, or events not readable) the stream is read in full.
        self._runs = runs  # in the catalog's order
        yield from self._plan_unlisted_customers()
        yield from self._explain_full_reads()

    def _plan_unlisted_customers(self) -> Iterator[Deferred]:
        """Whether this sync fetches the customers other objects name that the customers list leaves
        out (see `_named_customers`): when customers are read in full without an events stream to tell
        their deletions (`customer.deleted`), and to finish what an interrupted sync named (the
        customers state carries them: `_carry_named_customers`)."""
        customers = self._runs.get("customers")
        if customers is None or customers.mode != "backfill":
            return
        backfill = self._states.get("customers", {}).get("backfill") if customers.incremental else None
        carried = backfill.get("unlisted") if isinstance(backfill, dict) else None
        named = set(carried) if isinstance(carried, list) else set()
        events_tell_deletions = EVENTS.name in self._runs and self._events_denied is None
        owners = [run for run in self._runs.values() if run.stream.name in CUSTOMER_OWNED_STREAMS]
        owners_list = any(run.mode == "backfill" for run in owners)
        if owners and not events_tell_deletions and (customers.covered_at_start == 0 or owners_list):
            if customers.covered_at_start > 0:
                # Which customers the interrupted sync listed is not kept: list them all again, so that
                # every customer the owners' pages name is known to be listed or not.
                customers.done, customers.covered_at_start = [], 0
                if customers.sketch is not None:
                    customers.sketch = IdSketch()
                yield partial(
                    _log,
                    "INFO",
                    "customers: the interrupted sync's customers list is read again from the start: "
                    "without Events: Read, a customer the other streams name is fetched only when the "
                    "list leaves it out (deleted), and which customers that sync listed is not kept.",
                )
            self._named_customers = named
        elif named:
            self._named_customers, self._unlisted_carried = named, True

    def _explain_full_reads(self) -> Iterator[Deferred]:
        """Without events, changes cannot be replayed: say what each stream reads instead."""
        if self._events_denied is None:
            return
        runs = [r for r in self._runs.values() if r.incremental and r.stream is not EVENTS]
        full = [
            r
            for r in runs
            if r.mode == "backfill" and r.stream.cursor_field in self._states.get(r.stream.name, {})
        ]
        if full:
            names = ", ".join(r.stream.name for r in full)
            costs = [r.previous_full_requests for r in full if r.previous_full_requests]
            cost = f" The last full reads took {sum(costs)} requests in all." if costs else ""
            once = [r.stream.name for r in full if r.rule is not None]
            later = (
                f" {', '.join(once)}: in full this once only; later syncs read only what can still change."
                if once
                else ""
            )
            yield partial(
                _log,
                "WARN",
                "The API key cannot read events (it lacks 'rak_event_read'), so changes cannot be replayed: "
                f"{names} are read again in full to stay correct, which costs requests in proportion to "
                f"the account's size rather than to its changes.{cost}{later} Grant the key Events: Read "
                "to sync only what changed.",
            )
        reconciled = [r.stream.name for r in runs if r.mode == "reconcile"]
        if reconciled:
            yield partial(
                _log,
                "INFO",
                "The API key cannot read events (it lacks 'rak_event_read'): "
                f"{', '.join(reconciled)} read only what can still change: objects created since the last "
                "sync, every customer, subscriptions not canceled, draft, open and uncollectible invoices, "
                f"charges of the last {RECONCILIATIONS['charges'].recent_days} days, and the objects that "
                "left those lists since. Grant the key Events: Read to sync only what changed.",
            )

    @staticmethod
    def _describe_done(run: StreamRun) -> str:
        covered = sum(b - a for a, b in run.done)
        total = max(1, run.upper - run.lower)
        return f"{covered * 100 // total}% of the created range already read"

    # ---- task plumbing -------------------------------------------------------------------------

    def _submit(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._outstanding += 1
            if key == EVENTS_KEY:
                self._events_pending += 1
            else:
                self._runs[key].pending += 1
        assert self._executor is not None
        self._executor.submit(self._run_task, key, fn, *args)

    def _submit_window(
        self,
        key: str,
        path: str,
        base: Params,
        window: tuple[int, int | None],
        expand: StreamDef | None,
        open_ended: bool = True,
        *,
        cut: bool = True,
        early: bool = False,
    ) -> bool:
        """Read a window on the pool. A window cut from another (`cut`) takes a free reader, if one is
        left: False when none is. `early`: begun before the probe answered (`_begin_early`)."""
        with self._lock:
            if cut and self._windows_in_flight >= self._settings.readers:
                return False
            self._windows_in_flight += 1  # counted from now: a queued window will have a reader
            run = self._runs.get(key)
            if run is not None and run.mode == "backfill":
                self._densities.setdefault(key, None)
            token = object()
            if open_ended:
                self._open_windows.add(token)

        def read() -> None:
            try:
                self._read_window(key, path, base, window, expand, open_ended, token, early)
            finally:
                with self._lock:
                    self._windows_in_flight -= 1
                    self._open_windows.discard(token)
                    self._reading_alone.discard(token)

        self._submit(key, read)
        return True

    def _run_task(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            if not self._stop.is_set():
                fn(*args)
        except BaseException as error:  # reported to the generator thread, which decides
            self._out.put(("error", key, error))
        finally:
            self._out.put(("task_done", key))

    def _get(self, key: str, path: str, params: list[tuple[str, str | int]]) -> dict[str, Any]:
        if self._stop.is_set() or self._is_failed(key):
            raise _Cancelled()
        run = self._runs.get(key)
        if run is not None:
            run.requests += 1  # only its worker threads touch it; a lost increment is harmless
        return self._client.get(path, params)

    def _is_failed(self, key: str) -> bool:
        """Whether a stream's remaining work is pointless. After a 403 or an answer that is not what
        Stripe sends it is; after other errors the stream's other windows still finish, so that the
        next sync has less to read again."""
        if key == EVENTS_KEY:
            return self._events_failed is not None
        run = self._runs.get(key)
        return run is not None and isinstance(run.failed, StripePermissionError | StripeResponseError)

    # ---- work done on worker threads -----------------------------------------------------------

    def _read_window(
        self,
        key: str,
        path: str,
        base: Params,
        window: tuple[int, int | None],
        expand: StreamDef | None,
        open_ended: bool,
        token: object,
        early: bool,
    ) -> None:
        """Page through one created window newest-first; when a reader is free, hand it part of the
        unread rest (see `plan_cut`). Reports [low, top) done once every record in it was queued.
        `token` stands for the window in `_open_windows` while it is open-ended. A window begun before
        the probe answered (`early`, see `_begin_early`) ends at Stripe's clock then, or at its own top
        if that is older; without a top it was asked for without `created[lt]`."""
        low, end = window
        # The oldest of the windows a stream begins with when cut blind (`_begin_early`) stands for the
        # far past its newest would have handed on after its first page: it hands its own far past on
        # from its second page only, so that the blind cuts add no more windows than they stand for.
        cut_waits_a_page = early and open_ended and end is not None
        top = end or 0
        last_created = top - 1
        cursor: str | None = None
        pages = _PageGuard(path)
        s = self._settings
        seen = 0
        held: Callable[[], None] | None = None  # queues the last page read (see `_page_sender`)
        while True:
            params: list[tuple[str, str | int]] = [*base, ("limit", PAGE_SIZE), ("created[gte]", low)]
            if end is not None:
                params.append(("created[lt]", end))
            if cursor:
                params.append(("starting_after", cursor))
            try:
                page = self._get(key, path, params)
            except StripeNotFoundError:
                if cursor is None:
                    raise
                # The cursor object vanished (deleted, or it left the filter) while we paged: start
                # again from its second; the few records of that second are sent twice, none lost.
                end, cursor = last_created + 1, None
                pages = _PageGuard(path)
                continue
            data = pages.objects(page, cursor, need_created=True)
            if early:
                # The window ends where it would had it been asked for after the probe: what was
                # created since is left to the next sync (it reads from before this one's cursor). A
                # top cut by the machine's clock ahead of Stripe's is brought back to Stripe's: the
                # window above it is then empty (`low >= end`).
                early = False
                stripe_top = self._stripe_now() + 1
                top = end = stripe_top if end is None else min(end, stripe_top)
                last_created = top - 1
                in_window = [obj for obj in data if obj["created"] < end]
                if data and not in_window and page.get("has_more") is True and low < end:
                    cursor, pages = None, _PageGuard(path)  # a whole page created since: start at the top
                    continue
                data = in_window
            assert end is not None  # only a window begun early is asked for without a top
            pages.check_range(data, low, end)
            more = bool(data) and page.get("has_more") is True
            if key in self._densities and (data or self._densities[key] is None):
                # What this window measured, down to its page's last record (not to `low`: the far past
                # of an account is empty before its first object).
                bottom = int(data[-1]["created"]) if data else low
                self._densities[key] = (seen + len(data)) / max(1, top - bottom)
            if data:
                # Everything of this window newer than the page's last second, once queued.
                send = self._page_sender(key, expand, data, (int(data[-1]["created"]) + 1, top))
                if held is not None:
                    held()
                held = send
            if not more:
                break
            seen += len(data)
            last_created = int(data[-1]["created"])
            self._pages_read += 1  # shared by the windows; a lost increment is harmless
            in_flight = self._windows_in_flight
            if cut_waits_a_page:
                cut_waits_a_page = False
            elif in_flight < s.readers:
                density = seen / max(1, top - last_created)
                keep_pages = s.pages_per_cut
                # The last windows: too few to use the budget, and no far past left unknown but in
                # windows reading alone (`_keeps_far_past`).
                with self._lock:
                    open_elsewhere = bool(self._open_windows - self._reading_alone - {token})
                last_ones = in_flight <= s.readers // 2 and not open_elsewhere
                keeps = open_ended and not last_ones and self._keeps_far_past(key)  # None: not yet known
                with self._lock:
                    (self._reading_alone.add if keeps else self._reading_alone.discard)(token)
                # The end of the read: what is left is in windows being read (none is open-ended).
                # Smaller pieces let them finish together.
                ending = (
                    last_ones and not open_ended and self._end_cuts < self._pages_read // s.pages_per_end_cut
                )
                if ending:
                    keep_pages = s.pages_per_cut // 4
                cut = None
                if keeps is False:
                    cut = plan_cut(
                        low,
                        last_created,
                        density,
                        open_ended=open_ended,
                        keep_pages=keep_pages,
                        page_size=PAGE_SIZE,
                    )
                if cut is not None and self._submit_window(key, path, base, (low, cut), expand, open_ended):
                    with self._lock:
                        self._open_windows.discard(token)  # the piece handed on is the open-ended one
                    low, open_ended = cut, False
                    self._end_cuts += ending
            cursor = str(data[-1]["id"])
        if held is not None:
            held()
        self._out.put(("window_done", key, (low, top)))

    def _keeps_far_past(self, key: str) -> bool | None:
        """Whether an open-ended window of this stream reads on alone instead of handing its far past
        to a free reader: when the stream is so small a part of the read (by the densities its windows
        measured; every stream read by windows had a page) that one window reads the rest of it before
        the others end. A far past handed on costs a partial page more, or a whole empty one where the
        account is younger than the cut (at 1,000 customers: customers and subscriptions, 2 of the 8
        pages over the minimum). None until every stream had a page: it waits a page. Among the last windows
        of a read it is handed on all the same (the caller's check): a stream denser in its past than
        its newest pages showed does not read on alone once the others are done."""
        densities = dict(self._densities)
        if key not in densities:
            return False
        if any(density is None for density in densities.values()):
            return None
        total = sum(density or 0.0 for density in densities.values())
        return (densities[key] or 0.0) * self._settings.readers < total

    def _page_sender(
        self, key: str, expand: StreamDef | None, data: list[dict[str, Any]], covered: Interval
    ) -> Callable[[], None]:
        """Starts fetching the sublists of a page's objects (see `_complete`) on their own threads,
        and returns what queues the page once they are in: the window requests its next page
        meanwhile, instead of waiting a round trip or more for each page with a long invoice. An
        object deleted since it was listed (e.g. a draft invoice) is left out, as a listing a moment
        later would leave it out; a stored one gets its deletion event."""
        if expand is None:
            return partial(self._out.put, ("page", key, data, covered))
        observed = int(self._client.server_now())
        truncated = [obj for obj in data if _truncated(expand, obj)]
        assert self._sublists is not None
        fetches = [self._sublists.submit(self._complete, key, expand, obj) for obj in truncated]

        def send() -> None:
            gone = {obj["id"] for obj, fetch in zip(truncated, fetches, strict=True) if not fetch.result()}
            kept = [obj for obj in data if obj["id"] not in gone]
            for obj in kept:
                obj["updated"] = observed
            self._out.put(("page", key, kept, covered))

        return send

    def _complete(self, key: str, stream: StreamDef, obj: dict[str, Any]) -> bool:
        """Make embedded lists whole: every subscription item, every invoice line. False when the
        object no longer exists."""
        if stream.name == "subscriptions":
            sub_path, sub_params = "/v1/subscription_items", [("subscription", obj["id"])]
            holder = "items"
        elif stream.name == "invoices":
            sub_path, sub_params = f"/v1/invoices/{obj['id']}/lines", []
            holder = "lines"
        else:
            return True
        if not _truncated(stream, obj):
            return True
        embedded = obj[holder]
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        pages = _PageGuard(sub_path)
        while True:
            params: list[tuple[str, str | int]] = [*sub_params, ("limit", PAGE_SIZE)]
            if cursor:
                params.append(("starting_after", cursor))
            try:
                page = self._get(key, sub_path, params)
            except StripeNotFoundError:
                if cursor is None:
                    return False
                # The item we paged after was removed meanwhile: read the whole list again.
                items, cursor = [], None
                pages = _PageGuard(sub_path)
                continue
            data = pages.objects(page, cursor, need_created=False)
            items.extend(data)
            if not data or page.get("has_more") is not True:
                break
            cursor = str(data[-1]["id"])
        embedded["data"] = items
        embedded["has_more"] = False
        return True

    def _event_object(self, stream: StreamDef, change: Change) -> dict[str, Any] | None:
        """The object as its newest event carries it, when that is the object a fetch would give (but
        for a truncated list, see `_truncated`): the event is about the object itself, it is the later
        of the events of its second (see `_same_second`), it was rendered at the pinned API version,
        and it lacks no expansion. A new invoice changes its subscription's `latest_invoice` in the
        same second as the subscription's event, maybe after it: a subscription is fetched again when
        an invoice event of its customer is as new as its own. None: fetch the object again."""
        obj = change.event_object
        if (
            obj is None
            or change.ambiguous
            or change.api_version != API_VERSION
            or lacks_expansion(stream, obj)
        ):
            return None
        customer = obj.get("customer") if stream.name == "subscriptions" else None
        if isinstance(customer, str) and self._invoiced_at.get(customer, -1) >= change.at:
            return None
        created = obj.get("created")
        if obj.get("id") != change.object_id or not isinstance(created, int) or isinstance(created, bool):
            return None
        return copy.deepcopy(obj)  # a copy: the events stream emits the event, with this object in it

    def _complete_event_object(self, stream: StreamDef, change: Change, obj: dict[str, Any]) -> None:
        """An event's object whose embedded list is truncated: fetch that list only."""
        if obj["created"] < self._settings.start:
            return
        if self._complete(stream.name, stream, obj):
            obj["updated"] = change.at
            record = obj
        else:  # the object is gone since its event
            record = _tombstone(stream, change, max(int(self._client.server_now()), change.at))
        self._out.put(("page", stream.name, [record], None))

    def _refetch(self, stream: StreamDef, change: Change) -> None:
        """Fetch the current version of one changed object, as the backfill would have listed it."""
        key = stream.name
        try:
            obj = self._get(key, stream.retrieve_path(change.object_id), list(stream.retrieve_params))
        except StripeNotFoundError:
            obj = {"deleted": True}
        if not obj.get("deleted"):
            _check_object(stream.retrieve_path(change.object_id), obj, need_created=True)
        created = obj.get("created")
        if isinstance(created, int) and created < self._settings.start:
            return  # created before `start_date` (seen through a related object's event)
        observed = max(int(self._client.server_now()), change.at)
        if obj.get("deleted") or not self._complete(key, stream, obj):
            record = _tombstone(stream, change, observed)
        else:
            obj["updated"] = observed
            record = obj
        self._out.put(("page", key, [record], None))

    # ---- the generator thread ------------------------------------------------------------------

    def begin(self) -> None:
        """What `read` does before its first message: the probe, the plan and the first requests.
        Called early, before the Airbyte CDK is imported (see early.py), the requests start during
        that import: nothing here builds a message (the plan's are built when `read` yields them).
        Raises StripeError when the probe fails (the requests begun with it are stopped). Once it
        returned, `read` or `stop` must follow."""
        if self._began or not self._selected:
            return
        self._began = True
        self._executor = ThreadPoolExecutor(max_workers=self._settings.workers, thread_name_prefix="stripe")
        self._sublists = ThreadPoolExecutor(max_workers=self._settings.workers, thread_name_prefix="sublists")
        machine_now = int(self._client.server_now())  # no answer yet: the machine's clock
        probe = self._executor.submit(self._probe)  # first in the budget's queue: the others wait for it
        self._begin_early(machine_now)
        try:
            now = probe.result()
            self._planned = list(self._plan(now))
        except BaseException:
            self._stop.set()
            self._probed.set()  # the windows begun early stop (`_stripe_now`)
            self.stop()
            raise
        self._now = now
        self._probed.set()
        self._start(now)

    def _begin_early(self, machine_now: int) -> None:
        """The first page of each stream read in full from the start (no state: a first sync, or a
        full refresh) goes out with the probe instead of a round trip after it: such a stream's plan
        does not depend on what the probe tells, only its upper end (Stripe's clock) does, which its
        window learns when the page is in (see `_read_window`).

        The streams of `EARLY_CUTS` begin as several windows, cut by the machine's clock (the only one
        known yet), so that the first round trip carries more of the budget. Each window's top is
        brought back to Stripe's clock at the probe when that is older: a machine ahead of Stripe only
        empties the windows above Stripe's now (a request each), and nothing is read twice."""
        start = self._settings.start
        for stream, incremental in self._selected:
            if stream is EVENTS or (incremental and self._states.get(stream.name)):
                continue
            self._runs[stream.name] = StreamRun(stream=stream, incremental=incremental)
            self._begun_early.add(stream.name)
            cuts = sorted(machine_now - age for age in EARLY_CUTS.get(stream.name, ()))
            lows = [start, *(cut for cut in cuts if cut > start)]
            ends: list[int | None] = [*lows[1:], None]
            for i, (low, end) in enumerate(zip(lows, ends, strict=True)):
                self._submit_window(
                    stream.name,
                    stream.path,
                    stream.list_params,
                    (low, end),
                    stream,
                    open_ended=i == 0,  # how far back the oldest one reaches is unknown
                    cut=False,
                    early=True,
                )

    def _stripe_now(self) -> int:
        """Stripe's clock at the probe, once it answered (workers of windows begun early wait here)."""
        self._probed.wait()
        if self._stop.is_set():
            raise _Cancelled()
        return self._now

    def read(self) -> Iterator[ab.AirbyteMessage]:
        if not self._selected:
            return
        try:
            self.begin()
        except StripeError as error:
            raise _as_traced(error) from error
        with self._out.mutex:  # workers waiting to queue a page re-check the bound when one is taken
            self._out.maxsize = QUEUED_WHILE_READ
        try:
            for message in self._planned:
                yield message()
            for run in self._runs.values():
                descriptor = ab.StreamDescriptor(name=run.stream.name)
                yield ab.status_message(descriptor, ab.AirbyteStreamStatus.STARTED)
            for run in self._runs.values():
                if run.failed is not None:  # the events stream, when events are not readable
                    yield from self._report_failure(run, run.failed)
            # Streams with nothing to do finish at once (e.g. an empty plan).
            yield from self._finish_ready()
            yield from self._loop()
        finally:
            self.stop()
        yield from self._finish()

    def stop(self) -> None:
        """Ends the reads begun (workers stop at their next request) and waits for their threads."""
        self._stop.set()
        if self._executor is None or self._sublists is None:
            return
        self._drain()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._sublists.shutdown(wait=True, cancel_futures=True)

    def _start(self, now: int) -> None:
        for run in self._runs.values():
            if run.stream.name in self._begun_early:
                continue
            if run.mode == "backfill":
                for gap in gaps(run.lower, run.upper, run.done):
                    self._list(run, run.stream.list_params, gap)
            elif run.mode == "reconcile":
                self._start_reconciliation(run, now)
        consumers = [r for r in self._runs.values() if r.mode in ("events", "events_stream")]
        if not consumers:
            self._events_done = True
        elif self._events_denied is not None:
            # Only the events stream can be here: object streams were planned as full reads.
            self._events_done = True
            for run in consumers:
                run.failed = self._events_denied
        else:
            # The events stream carries every billing type; otherwise follow what is replayed.
            followed = OBJECT_STREAMS if EVENTS.name in self._runs else [r.stream for r in consumers]
            types = event_types_for(list(followed))
            start = min(r.events_from for r in consumers)
            for i in range(0, len(types), MAX_EVENT_TYPES_PER_REQUEST):
                chunk = types[i : i + MAX_EVENT_TYPES_PER_REQUEST]
                base: Params = tuple(("types[]", t) for t in chunk)
                for window in initial_windows((start, now + 1), max_days=2, max_parts=8):
                    self._submit_window(EVENTS_KEY, EVENTS.path, base, window, None, cut=False)

    def _list(self, run: StreamRun, params: Params, interval: Interval) -> None:
        """Read every object of a list created in `interval`: one window, which hands parts of itself
        to free readers once its pages show how dense the list is (see `plan_cut`)."""
        name = run.stream.name
        self._submit_window(name, run.stream.path, params, interval, run.stream, cut=False)

    def _start_reconciliation(self, run: StreamRun, now: int) -> None:
        """Objects created since the last sync (and, for charges, lately), then the lists of what can
        still change among the older ones."""
        assert run.rule is not None
        cut = max(run.lower, run.previous_upper - LIST_OVERLAP)
        fresh_from = cut
        if run.rule.recent_days:
            fresh_from = max(run.lower, min(cut, now - run.rule.recent_days * DAY))
        self._list(run, run.stream.list_params, (fresh_from, run.upper))
        for extra in run.rule.filters:
            if run.lower < cut:
                self._list(run, filtered_params(run.stream, extra), (run.lower, cut))

    def _check_departures(self, run: StreamRun) -> Iterator[ab.AirbyteMessage]:
        """The objects that left the lists since the last sync (paid, canceled, deleted) are fetched
        one by one; when too many left to name them, the stream is read in full this once."""
        if run.previous is None or run.present is None or run.rule is None:
            return
        name = run.stream.name
        departed = run.previous.departed(run.present)
        if departed is None and lists_everything(run.stream, run.rule):
            yield _log(
                "WARN",
                f"{name}: more objects were deleted since the last sync than the state can name; the "
                "deleted ones stay in the destination as they were. Sync more often to avoid this.",
            )
        elif departed is None:
            yield _log(
                "WARN",
                f"{name}: more objects changed state since the last sync than the state can name; the "
                "stream is read in full this once. Sync more often to avoid this.",
            )
            self._list(run, run.stream.list_params, (run.lower, run.upper))
        elif departed:
            yield _log(
                "INFO",
                f"{name}: {len(departed)} objects left the lists of what can still change since the last "
                "sync (paid, canceled, deleted...); fetching each.",
            )
            for object_id in departed:
                self._submit(name, self._refetch, run.stream, Change(object_id=object_id, at=run.upper - 1))

    def _fetch_unlisted_customers(self, run: StreamRun) -> Iterator[ab.AirbyteMessage]:
        """Fetch once each customer that other objects name but the customers list did not give: a
        deleted one becomes a tombstone (as its deletion event would give), a live one a record."""
        assert self._named_customers is not None
        unlisted = sorted(self._named_customers - self._listed_customers - self._fetched_early)
        self._named_customers, self._unlisted = None, unlisted
        count = len(unlisted) + len(self._fetched_early)
        if not count:
            return
        yield _log(
            "INFO",
            f"customers: {count} customers named by subscriptions, invoices or charges were not "
            "listed (Stripe lists only live customers); fetching each once to learn whether it was deleted.",
        )
        for customer in unlisted:
            self._submit(
                run.stream.name, self._refetch, run.stream, Change(object_id=customer, at=run.upper - 1)
            )

    def _note_customers(self, key: str, records: list[dict[str, Any]]) -> None:
        """Which customers this page lists (customers) or names (the objects customers own)."""
        if self._named_customers is None:
            return
        if key == "customers":
            self._listed_customers.update(record["id"] for record in records)
        elif key in CUSTOMER_OWNED_STREAMS and not self._unlisted_carried:
            named = (customer_of(key, record) for record in records)
            self._named_customers.update(customer for customer in named if customer)
            self._fetch_unlisted_early()

    def _fetch_unlisted_early(self) -> None:
        """Once the customers list is read in full, a customer other objects name and the list did
        not give is fetched at once, not after the owning streams end (`_fetch_unlisted_customers`):
        the end of a first sync waits a round trip less."""
        customers = self._runs.get("customers")
        if (
            self._named_customers is None
            or self._unlisted_carried
            or customers is None
            or customers.failed is not None
            or gaps(customers.lower, customers.upper, customers.done)
        ):
            return
        for customer in sorted(self._named_customers - self._listed_customers - self._fetched_early):
            self._fetched_early.add(customer)
            change = Change(object_id=customer, at=customers.upper - 1)
            self._submit(customers.stream.name, self._refetch, customers.stream, change)

    def _loop(self) -> Iterator[ab.AirbyteMessage]:
        while True:
            with self._lock:
                if self._outstanding == 0:
                    break
            message = self._out.get()
            kind, key = message[0], message[1]
            if kind == "page":
                yield from self._on_page(key, message[2], message[3])
            elif kind == "window_done":
                yield from self._on_window_done(key, message[2])
            elif kind == "error":
                yield from self._on_error(key, message[2])
            elif kind == "task_done":
                self._task_finished(key)
                if key == EVENTS_KEY and self._events_pending == 0 and not self._events_done:
                    yield from self._on_events_read()
                yield from self._finish_ready()

    def _emit_records(self, run: StreamRun, records: list[dict[str, Any]]) -> Iterator[ab.AirbyteMessage]:
        if run.records == 0 and records:
            yield ab.status_message(ab.StreamDescriptor(name=run.stream.name), ab.AirbyteStreamStatus.RUNNING)
        run.records += len(records)
        emitted_at = int(self._now_ms())
        name = run.stream.name
        for record in records:
            yield ab.AirbyteMessage(
                type=ab.Type.RECORD,
                record=ab.AirbyteRecordMessage(stream=name, data=record, emitted_at=emitted_at),
            )

    def _on_page(
        self, key: str, records: list[dict[str, Any]], covered: Interval | None
    ) -> Iterator[ab.AirbyteMessage]:
        if key != EVENTS_KEY:
            run = self._runs[key]
            if isinstance(run.failed, StripePermissionError):
                return
            yield from self._emit_records(run, records)
            self._follow(run, records)
            self._note_customers(key, records)
            if covered is not None and run.mode == "backfill":
                # A resumed backfill checkpoints within a window too, not only when a window ends.
                run.done = merge([*run.done, covered])
                yield from self._checkpoint(run)
            return
        events_run = self._runs.get(EVENTS.name)
        to_emit = []
        for event in records:
            created = int(event.get("created") or 0)
            if events_run is not None and created >= events_run.events_from:
                event["updated"] = created
                to_emit.append(event)
            found = change_from_event(event)
            if found is None:
                continue
            stream, change = found
            changes = self._changes.get(stream.name)
            if changes is None or created < self._runs[stream.name].events_from:
                continue
            if change.created is not None and change.created < self._settings.start:
                continue  # created before `start_date`: not synced by this connection
            if stream.name == "invoices" and change.customer:
                billed = self._invoiced_at.get(change.customer, 0)
                self._invoiced_at[change.customer] = max(billed, change.at)
            known = changes.get(change.object_id)
            if known is not None and (known.at, known.deleted) == (change.at, change.deleted):
                _same_second(stream, known, change)
            elif known is None or (change.at, change.deleted) > (known.at, known.deleted):
                changes[change.object_id] = change
        if events_run is not None and events_run.failed is None and to_emit:
            yield from self._emit_records(events_run, to_emit)

    def _on_events_read(self) -> Iterator[ab.AirbyteMessage]:
        """All events are in: fetch each changed object once (tombstones for the deleted)."""
        for name, changes in self._changes.items():
            run = self._runs[name]
            if run.failed is not None:
                continue
            tombstones = [_tombstone(run.stream, c, c.at) for c in changes.values() if c.deleted]
            as_sent = []
            for change in changes.values():
                if change.deleted:
                    continue
                obj = self._event_object(run.stream, change)
                if obj is None:
                    self._submit(name, self._refetch, run.stream, change)
                elif _truncated(run.stream, obj):
                    self._submit(name, self._complete_event_object, run.stream, change, obj)
                elif obj["created"] >= self._settings.start:
                    obj["updated"] = change.at  # the version as of its event (docs/DESIGN.md)
                    as_sent.append(obj)
            fetched = len(changes) - len(tombstones) - len(as_sent)
            yield _log(
                "INFO",
                f"{name}: {len(changes)} objects changed since the last sync ({len(tombstones)} deleted); "
                f"{len(as_sent)} taken from their newest event, {fetched} fetched (or completed) again.",
            )
            yield _estimate(name, len(changes))
            if tombstones or as_sent:
                yield from self._emit_records(run, [*tombstones, *as_sent])
        self._changes = {}
        self._events_done = True

    def _on_window_done(self, key: str, window: Interval) -> Iterator[ab.AirbyteMessage]:
        if key == EVENTS_KEY:
            return
        run = self._runs[key]
        if run.mode == "backfill":
            run.done = merge([*run.done, window])
            if key == "customers":
                self._fetch_unlisted_early()
            yield from self._checkpoint(run)

    def _follow(self, run: StreamRun, records: list[dict[str, Any]]) -> None:
        """Adds the emitted objects that can still change to the sketch the next sync starts from."""
        if run.sketch is None or run.rule is None or run.rule.watched is None:
            return
        for record in records:
            object_id = record["id"]
            if record.get("deleted") or object_id in run.watched_ids or not run.rule.watched(record):
                continue
            run.watched_ids.add(object_id)
            run.sketch.add(object_id)
            if run.present is not None and record["created"] < run.previous_upper:
                run.present.add(object_id)

    def _checkpoint(self, run: StreamRun) -> Iterator[ab.AirbyteMessage]:
        """At most once a second per stream: how many records the backfill will give, and (when
        incremental) the state of what is read so far."""
        moment = time.monotonic()
        if moment - run.last_state_at < self._settings.state_interval_seconds:
            return
        run.last_state_at = moment
        covered = sum(b - a for a, b in run.done)
        covered_now = covered - run.covered_at_start
        if covered_now > 0:
            unread = max(0, run.upper - run.lower - covered)
            yield _estimate(run.stream.name, run.records + run.records * unread // covered_now)
        if run.incremental:
            yield from self._carry_named_customers(run)
            yield self._state_message(run)

    def _carry_named_customers(self, run: StreamRun) -> Iterator[ab.AirbyteMessage]:
        """Before a state of a stream that names customers: a customers state carrying each customer
        named so far that the list has not given, unless the last one did. A sync interrupted after
        that stream's state then still fetches them (its pages are not read again)."""
        customers = self._runs.get("customers")
        if (
            run.stream.name in CUSTOMER_OWNED_STREAMS
            and customers is not None
            and customers.incremental
            and not customers.finished
            and self._named_customers is not None
            and not self._unlisted_carried
            and not self._named_customers - self._listed_customers <= self._unlisted_in_state
        ):
            yield self._state_message(customers)

    def _unverified_customers(self) -> list[str]:
        """The customers named by other objects and not listed (so far), or being fetched: the
        customers state carries them until each is fetched."""
        if self._named_customers is None:
            return self._unlisted
        return sorted(self._named_customers - self._listed_customers)

    def _on_error(self, key: str, error: BaseException) -> Iterator[ab.AirbyteMessage]:
        if isinstance(error, _Cancelled):
            return
        if isinstance(error, StripeAuthError):
            self._stop.set()
            raise ab.AirbyteTracedException(
                message=f"Stripe rejected the API key during the sync: {error}",
                internal_message=str(error),
                failure_type=ab.FailureType.config_error,
                exception=error,
            )
        targets = (
            [r for r in self._runs.values() if r.mode in ("events", "events_stream")]
            if key == EVENTS_KEY
            else [self._runs[key]]
        )
        if key == EVENTS_KEY:
            if self._events_failed is not None:
                return
            self._events_failed = error
        for run in targets:
            if run.failed is None:
                run.failed = error
                yield from self._report_failure(run, error)

    def _report_failure(self, run: StreamRun, error: BaseException) -> Iterator[ab.AirbyteMessage]:
        name = run.stream.name
        if isinstance(error, StripePermissionError):
            permission = getattr(error, "permission", None) or run.stream.permission
            yield _log(
                "WARN",
                f"{name}: skipped: the API key lacks the '{permission}' permission "
                f"(Stripe answered 403 for {run.stream.path}). Grant it to sync this stream.",
            )
            return
        failure_type = (
            ab.FailureType.transient_error
            if isinstance(error, StripeTransientError)
            else ab.FailureType.system_error
        )
        text = str(error) if isinstance(error, StripeError) else f"{type(error).__name__}: {error}"
        yield ab.AirbyteTracedException(
            message=f"{name}: the stream could not be read: {text}",
            internal_message=text,
            failure_type=failure_type,
            stream_descriptor=ab.StreamDescriptor(name=name),
        ).as_sanitized_airbyte_message()

    def _finish_ready(self) -> Iterator[ab.AirbyteMessage]:
        # Customers last: they wait for the streams that name customers (`_fetch_unlisted_customers`).
        for run in sorted(self._runs.values(), key=lambda r: r.stream.name == "customers"):
            if run.finished or run.pending > 0:
                continue
            if run.mode in ("events", "events_stream") and not self._events_done:
                continue
            if run.stream.name == "customers" and self._named_customers is not None and run.failed is None:
                owners = [r for r in self._runs.values() if r.stream.name in CUSTOMER_OWNED_STREAMS]
                if not all(r.finished for r in owners):
                    continue
                yield from self._fetch_unlisted_customers(run)
                if run.pending > 0:
                    continue
            if run.mode == "reconcile" and not run.departures_checked and run.failed is None:
                run.departures_checked = True
                yield from self._check_departures(run)
                if run.pending > 0:
                    continue
            run.finished = True
            yield from self._close(run)

    def _close(self, run: StreamRun) -> Iterator[ab.AirbyteMessage]:
        if run.incremental:
            yield from self._carry_named_customers(run)  # before this stream's last state
        descriptor = ab.StreamDescriptor(name=run.stream.name)
        outcome = "failed" if run.failed is not None else "done"
        yield _log(
            "INFO",
            f"{run.stream.name}: {outcome}: {run.records} records in {run.requests} requests "
            f"({_MODE_NAMES[run.mode]}).",
        )
        if run.failed is not None:
            if run.incremental and run.mode == "backfill" and run.done:
                # The windows read in full stay read: the next sync resumes from here.
                yield self._state_message(run)
            yield ab.status_message(descriptor, ab.AirbyteStreamStatus.INCOMPLETE)
            return
        if run.incremental:
            if run.mode == "backfill":
                run.previous_full_requests = run.requests
            if run.mode == "events_stream":
                new_state: dict[str, Any] = {"created": run.upper - 1}
            else:
                new_state = {run.stream.cursor_field: run.upper - 1}
                if run.previous_full_requests is not None:
                    new_state["full_read_requests"] = run.previous_full_requests
                if run.sketch is not None:
                    new_state["watch"] = run.sketch.to_state()
                if run.mode == "reconcile":
                    new_state["records"] = run.records
            yield self._state_message(run, new_state)
        yield ab.status_message(descriptor, ab.AirbyteStreamStatus.COMPLETE)

    def _state_message(self, run: StreamRun, blob: dict[str, Any] | None = None) -> ab.AirbyteMessage:
        if blob is None:
            blob = {
                "backfill": {
                    "lower": run.lower,
                    "upper": run.upper,
                    "done": [list(i) for i in run.done],
                    "requests": run.requests,
                }
            }
            if run.previous_full_requests is not None:
                blob["full_read_requests"] = run.previous_full_requests
            if run.sketch is not None:
                blob["watch"] = run.sketch.to_state()
            if run.stream.name == "customers":
                unverified = self._unverified_customers()  # the next sync fetches these
                self._unlisted_in_state = set(unverified)
                if unverified:
                    blob["backfill"]["unlisted"] = unverified
        return ab.AirbyteMessage(
            type=ab.Type.STATE,
            state=ab.AirbyteStateMessage(
                type=ab.AirbyteStateType.STREAM,
                stream=ab.AirbyteStreamState(
                    stream_descriptor=ab.StreamDescriptor(name=run.stream.name),
                    stream_state=ab.AirbyteStateBlob(**blob),
                ),
            ),
        )

    def _finish(self) -> Iterator[ab.AirbyteMessage]:
        failed = [r for r in self._runs.values() if r.failed is not None]
        # Without a core stream every customer's health would read "none": fail, after the other streams
        # have been read and checkpointed (nothing read is lost), naming the permissions to grant.
        denied_core = {
            r.stream.name: getattr(r.failed, "permission", None) or r.stream.permission
            for r in failed
            if isinstance(r.failed, StripePermissionError) and r.stream.name in CORE_STREAMS
        }
        if denied_core:
            message = missing_core_message("API key", denied_core)
            raise ab.AirbyteTracedException(
                message=message, internal_message=message, failure_type=ab.FailureType.config_error
            )
        hard = [r for r in failed if not isinstance(r.failed, StripePermissionError)]
        if not hard:
            return
        names = ", ".join(r.stream.name for r in hard)
        all_transient = all(isinstance(r.failed, StripeTransientError) for r in hard)
        raise ab.AirbyteTracedException(
            message=f"These streams did not sync completely: {names}. The other streams did.",
            internal_message=f"failed streams: {names}",
            failure_type=ab.FailureType.transient_error if all_transient else ab.FailureType.system_error,
        )
        yield  # pragma: no cover - makes this a generator

    def _drain(self) -> None:
        """Let workers finish (they stop at their next request) without blocking on a full queue."""
        while True:
            with self._lock:
                if self._outstanding == 0:
                    return
            kind, key, *_ = self._out.get()
            if kind == "task_done":
                self._task_finished(key)

    def _task_finished(self, key: str) -> None:
        with self._lock:
            self._outstanding -= 1
            if key == EVENTS_KEY:
                self._events_pending -= 1
            else:
                self._runs[key].pending -= 1


def _as_traced(error: StripeError) -> ab.AirbyteTracedException:
    if isinstance(error, StripeAuthError | StripePermissionError):
        failure_type = ab.FailureType.config_error
    elif isinstance(error, StripeTransientError):
        failure_type = ab.FailureType.transient_error
    else:
        failure_type = ab.FailureType.system_error
    return ab.AirbyteTracedException(
        message=f"Stripe: {error}", internal_message=str(error), failure_type=failure_type, exception=error
    )


def _same_second(stream: StreamDef, known: Change, other: Change) -> None:
    """Two events about one object in the same second: the list's order within a second is not a
    promise, so the later object is the one further along its lifecycle; between two as far along,
    the same object is no doubt, different ones are (and the object is fetched again)."""
    if known.event_object is None or other.event_object is None:
        known.event_object, known.ambiguous = None, False
        return
    step = lifecycle_step(stream, other.event_object) - lifecycle_step(stream, known.event_object)
    if step > 0:
        known.event_object, known.api_version, known.ambiguous = other.event_object, other.api_version, False
    elif step == 0 and other.event_object != known.event_object:
        known.ambiguous = True


def _truncated(stream: StreamDef, obj: dict[str, Any]) -> bool:
    """Whether a list embedded in the object (subscription items, invoice lines) has more than it shows."""
    holder = {"subscriptions": "items", "invoices": "lines"}.get(stream.name)
    embedded = obj.get(holder) if holder else None
    return isinstance(embedded, dict) and embedded.get("has_more") is True


class _Cancelled(Exception):
    """A task stopped because its stream failed or the sync is ending."""


class _PageGuard:
    """Checks each page of one paging run: a list of objects with an id (and a `created` where the
    windows need it), and a cursor that moves on. A server that ignores `starting_after` but keeps
    saying `has_more` would otherwise be read forever."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: set[str] = set()

    def objects(
        self, page: dict[str, Any], cursor: str | None, *, need_created: bool
    ) -> list[dict[str, Any]]:
        data = page.get("data")
        if not isinstance(data, list):
            raise StripeResponseError(
                f"GET {self.path} answered a list whose `data` is {type(data).__name__}, not a list.",
                path=self.path,
            )
        for obj in data:
            _check_object(self.path, obj, need_created=need_created)
            if obj["id"] in self.seen:
                raise StripeResponseError(
                    f"GET {self.path} sent object {obj['id']} again on the page after "
                    f"starting_after={cursor}: the server does not move on through the list, so the read "
                    "stopped rather than read the same page forever.",
                    path=self.path,
                )
            self.seen.add(obj["id"])
        return data

    def check_range(self, data: list[dict[str, Any]], low: int, end: int) -> None:
        """A server that ignores the `created` filter would make the windows split without end."""
        for obj in data:
            if not low <= obj["created"] < end:
                raise StripeResponseError(
                    f"GET {self.path} answered object {obj['id']} created at {obj['created']}, outside the "
                    f"requested created[gte]={low} and created[lt]={end}: the server ignores the filter, so "
                    "the read stopped.",
                    path=self.path,
                )


def _check_object(path: str, obj: object, *, need_created: bool) -> None:
    if not isinstance(obj, dict):
        raise StripeResponseError(
            f"GET {path} answered an object that is {type(obj).__name__}, not a JSON object.", path=path
        )
    object_id = obj.get("id")
    if not isinstance(object_id, str) or not object_id:
        raise StripeResponseError(
            f"GET {path} answered an object without a valid `id` (got {object_id!r}).", path=path
        )
    created = obj.get("created")
    if need_created and (not isinstance(created, int) or isinstance(created, bool)):
        raise StripeResponseError(
            f"GET {path} answered object {object_id} without a valid `created` (got {created!r}).", path=path
        )
