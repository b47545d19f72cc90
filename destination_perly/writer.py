"""The Airbyte side of the destination: messages in, committed rows and acknowledged state out.

- Records are buffered per stream, bounded by records and bytes per stream and by bytes overall;
  a full buffer is flushed alone, in one transaction, and the other buffers are left untouched.
- A STATE message is echoed unchanged right after the records it covers are committed: for a
  per-stream state, that stream's buffer; for a GLOBAL or legacy state, every buffer. A failed commit
  raises before the echo, so uncommitted data is never acknowledged.
- `overwrite`, and refreshes that truncate (`minimum_generation_id == generation_id`), load into a
  stage table that replaces the live one in one transaction when the stream completes: on its
  STREAM_STATUS COMPLETE trace, or at the end of input when the input carries no stream statuses
  (then only for streams that sent a record or a state: a silent one keeps its live table).
- Health is recomputed at the end for every touched and time-sensitive customer, and during long
  syncs, at a state flush, for customers touched since the last recompute.
- `parse_input_lines` reads stdin lines with orjson, RECORDs without the CDK's per-message model
  (that model cost as much as the JSON parse itself); other messages still go through the CDK.
  `RecordPreparer` turns a record into its row; both may run in a helper process
  (`input_reader`), the writer then receiving `PreparedRecord`s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from airbyte_cdk.models import (  # type: ignore[attr-defined,unused-ignore]
    AirbyteLogMessage,
    AirbyteMessage,
    AirbyteMessageSerializer,
    AirbyteStateType,
    AirbyteStreamStatus,
    ConfiguredAirbyteCatalog,
    DestinationSyncMode,
    Level,
    TraceType,
    Type,
)

from destination_perly.ingest import Ingestor
from destination_perly.store.base import Row

logger = logging.getLogger("airbyte")


class RawRecord(NamedTuple):
    """A RECORD message as parsed JSON: the write loop's fast path (no protocol model per record)."""

    stream: str
    data: Any


class PreparedRecord(NamedTuple):
    """A record made ready to buffer: its row and every customer it touches."""

    stream: str
    row: Row
    customer_ids: list[str]


class Skipped(NamedTuple):
    """Input left out, and why (the message never quotes the input: it may hold customer data)."""

    message: str
    record: bool  # a malformed RECORD (counted), else a line that is not a message


InputMessage = AirbyteMessage | RawRecord | PreparedRecord | Skipped


def parse_input_lines(lines: Iterable[str | bytes]) -> Iterator[InputMessage]:
    """stdin lines to messages, as the CDK does, except that RECORD lines become `RawRecord`s: building
    the CDK's model for each record costs more than parsing its JSON. Anything else, or a RECORD the
    fast path does not recognise, goes through the CDK's serializer (which validates it). A line that
    is not JSON is skipped, and is not echoed (it may hold customer data)."""
    for line in lines:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield Skipped("ignoring an input line that is not an Airbyte message", record=False)
            continue
        if isinstance(message, dict) and message.get("type") == "RECORD":
            record = message.get("record")
            if isinstance(record, dict) and isinstance(record.get("stream"), str) and "data" in record:
                yield RawRecord(record["stream"], record["data"])
                continue
        yield AirbyteMessageSerializer.load(message)


@dataclass(frozen=True)
class StreamPlan:
    """What the catalog asks for one stream, and how we do it (`staged`: via a stage table)."""

    name: str
    sync_mode: DestinationSyncMode = DestinationSyncMode.append
    generation_id: int | None = None
    minimum_generation_id: int | None = None

    @property
    def staged(self) -> bool:
        if self.sync_mode == DestinationSyncMode.overwrite:
            return True
        return bool(self.generation_id) and self.minimum_generation_id == self.generation_id


@dataclass
class StreamBuffer:
    rows: list[Row] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    bytes: int = 0


@dataclass(frozen=True)
class WriterLimits:
    max_records_per_stream: int = 10_000
    max_bytes_per_stream: int = 8 * 1024 * 1024
    max_bytes_total: int = 32 * 1024 * 1024
    # During a long sync, recompute touched customers at a state flush at most this often.
    refresh_interval_s: float = 120.0


@dataclass
class WriteStats:
    records: int = 0
    malformed: int = 0
    flushes: int = 0
    states: int = 0
    refreshed: int = 0
    refresh_failures: int = 0
    refresh_seconds: float = 0.0


class RecordPreparer:
    """Checks a record and builds its row without touching the store, so it can run in the input
    reader process."""

    def __init__(self, ingestor: Ingestor, plans: dict[str, StreamPlan]) -> None:
        self.prepare = ingestor.prepare
        self.generation_ids = {name: plan.generation_id for name, plan in plans.items()}
        self.seen = 0

    def __call__(self, stream: str, data: object) -> PreparedRecord | Skipped:
        self.seen += 1
        record_id = data.get("id") if isinstance(data, dict) else None
        if isinstance(record_id, int) and not isinstance(record_id, bool):
            record_id = str(record_id)
        if not isinstance(data, dict) or not isinstance(record_id, str) or not record_id:
            shape = "not an object" if not isinstance(data, dict) else "no string id"
            where = f"record {self.seen} of the input"
            return Skipped(f"skipped a malformed record in stream {stream!r} ({where}): {shape}", record=True)
        if data["id"] is not record_id:  # an integer id, kept as text like Stripe's
            data = {**data, "id": record_id}
        # A stream the catalog did not announce is kept, appended by id (no generation).
        row, ids = self.prepare(stream, data, self.generation_ids.get(stream))
        return PreparedRecord(stream, row, ids)


def plans_from_catalog(catalog: ConfiguredAirbyteCatalog) -> dict[str, StreamPlan]:
    return {
        s.stream.name: StreamPlan(
            name=s.stream.name,
            sync_mode=s.destination_sync_mode or DestinationSyncMode.append,
            generation_id=s.generation_id,
            minimum_generation_id=s.minimum_generation_id,
        )
        for s in catalog.streams
    }


def _log(level: Level, message: str) -> AirbyteMessage:
    return AirbyteMessage(type=Type.LOG, log=AirbyteLogMessage(level=level, message=message))


class Writer:
    def __init__(
        self,
        ingestor: Ingestor,
        plans: dict[str, StreamPlan],
        as_of: Callable[[], datetime],
        limits: WriterLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingestor = ingestor
        self.store = ingestor.store
        self.plans = dict(plans)
        self.as_of = as_of
        self.limits = limits or WriterLimits()
        self.monotonic = monotonic
        self.buffers: dict[str, StreamBuffer] = {}
        self.total_bytes = 0
        self.stats = WriteStats()
        self.saw_stream_status = False
        self.completed: set[str] = set()
        self.heard_from: set[str] = set()
        self.last_refresh = monotonic()
        self.preparer = RecordPreparer(ingestor, self.plans)
        # Commits run in a thread while the next records are read (the database works meanwhile).
        self._committer: ThreadPoolExecutor | None = None
        self._committing: Future[None] | None = None
        self._unacknowledged: list[AirbyteMessage] = []  # states whose commits may be in flight
        self._acknowledgeable: list[AirbyteMessage] = []  # states whose records are all committed

    # --- the message loop ---------------------------------------------------------------------
    def write(self, messages: Iterable[InputMessage]) -> Iterator[AirbyteMessage]:
        """Accepts the CDK's messages or `parse_input_lines` output (records as `RawRecord`)."""
        self.store.ensure_schema()
        for plan in self.plans.values():
            if plan.staged:
                self.store.begin_stage(plan.name, plan.generation_id)
        try:
            yield from self._write(messages)
        except Exception:
            # States whose records are committed are still acknowledged before the error goes on.
            yield from self._acknowledged(wait=True)
            raise
        finally:
            self._stop_committer()

    def _write(self, messages: Iterable[InputMessage]) -> Iterator[AirbyteMessage]:
        for message in messages:
            if isinstance(message, RawRecord):
                message = self.preparer(message.stream, message.data)
            elif isinstance(message, AirbyteMessage) and message.type == Type.RECORD and message.record:
                message = self.preparer(message.record.stream, message.record.data)
            if isinstance(message, PreparedRecord):
                self._add_record(message)
            elif isinstance(message, Skipped):
                self.stats.malformed += message.record
                yield _log(Level.ERROR if message.record else Level.INFO, message.message)
            elif message.type == Type.STATE and message.state is not None:
                self._note_state_streams(message)
                self._flush_for_state(message)
                self.stats.states += 1
                self._unacknowledged.append(message)
                if self.monotonic() - self.last_refresh >= self.limits.refresh_interval_s:
                    yield from self._acknowledged(wait=True)
                    self._refresh(include_time_sensitive=False)
            elif message.type == Type.TRACE and message.trace is not None:
                yield from self._acknowledged(wait=True)  # (rare) the states before a stream completes
                self._on_trace(message)
            yield from self._acknowledged(wait=False)
        for name in list(self.buffers):
            self._flush(name)
        if not self.saw_stream_status:
            # Without stream statuses, the end of input completes the streams that sent something;
            # one that sent nothing may never have started, so its live table is kept.
            for plan in self.plans.values():
                if plan.staged and plan.name not in self.completed and plan.name in self.heard_from:
                    self._complete_staged(plan)
        yield from self._acknowledged(wait=True)
        self._refresh(include_time_sensitive=True)
        yield _log(
            Level.INFO,
            f"destination-perly: {self.stats.records} records in {self.stats.flushes} flushes, "
            f"{self.stats.malformed} malformed skipped, {self.stats.states} states acknowledged, "
            f"{self.stats.refreshed} customers recomputed in {self.stats.refresh_seconds:.1f} s "
            f"({self.stats.refresh_failures} failed)",
        )

    # --- records ------------------------------------------------------------------------------
    def _add_record(self, record: PreparedRecord) -> None:
        stream, row = record.stream, record.row
        self.heard_from.add(stream)
        if stream not in self.plans:  # a stream the catalog did not announce: kept, appended by id
            self.plans[stream] = StreamPlan(name=stream)
        buffer = self.buffers.setdefault(stream, StreamBuffer())
        buffer.rows.append(row)
        buffer.touched.update(record.customer_ids)
        size = len(row.data)
        buffer.bytes += size
        self.total_bytes += size
        self.stats.records += 1
        if (
            len(buffer.rows) >= self.limits.max_records_per_stream
            or buffer.bytes >= self.limits.max_bytes_per_stream
        ):
            self._flush(stream)
        elif self.total_bytes >= self.limits.max_bytes_total:
            self._flush(max(self.buffers, key=lambda name: self.buffers[name].bytes))

    def _flush(self, stream: str) -> None:
        """Hands one stream's buffer to the committer thread, to commit in one transaction while the
        next records are read; other buffers are not touched. One commit at a time: a buffer waits for
        the one before it, so memory holds at most one batch beyond the buffers."""
        buffer = self.buffers.get(stream)
        if buffer is None or not buffer.rows:
            return
        plan = self.plans[stream]
        self._wait_committed()
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perly-commit")
        self._committing = self._committer.submit(
            self.ingestor.upsert_rows, stream, buffer.rows, buffer.touched, plan.staged
        )
        self.total_bytes -= buffer.bytes
        del self.buffers[stream]
        self.stats.flushes += 1

    def _wait_committed(self) -> None:
        """Waits for the commit in flight (raising its failure); then every state received so far has
        all its records committed."""
        committing, self._committing = self._committing, None
        if committing is not None:
            try:
                committing.result()
            except BaseException:
                self._unacknowledged = []  # their records may not all be committed: never acknowledged
                raise
            finally:
                # The future holds its error, whose traceback holds this frame: no cycle left to keep
                # the error's other frames (and the input they read) alive.
                del committing
        self._acknowledgeable += self._unacknowledged
        self._unacknowledged = []

    def _stop_committer(self) -> None:
        """Lets the commit in flight end (the store is never left to a running thread) and stops the
        thread (before a refresh forks its helper, and at the end)."""
        if self._committing is not None:
            self._committing.exception()  # waits; a failure is raised by whoever waits for it first
        if self._committer is not None:
            self._committer.shutdown()
            self._committer = None

    # --- state --------------------------------------------------------------------------------
    def _acknowledged(self, wait: bool) -> Iterator[AirbyteMessage]:
        """The states whose records are committed, in order; with `wait`, all of them."""
        if wait or self._committing is None or self._committing.done():
            self._wait_committed()
        acknowledgeable, self._acknowledgeable = self._acknowledgeable, []
        yield from acknowledgeable

    def _note_state_streams(self, message: AirbyteMessage) -> None:
        state = message.state
        assert state is not None
        if state.type == AirbyteStateType.STREAM and state.stream is not None:
            self.heard_from.add(state.stream.stream_descriptor.name)

    def _flush_for_state(self, message: AirbyteMessage) -> None:
        state = message.state
        assert state is not None
        if state.type == AirbyteStateType.STREAM and state.stream is not None:
            self._flush(state.stream.stream_descriptor.name)
        else:  # GLOBAL or legacy: the state covers every stream
            for name in list(self.buffers):
                self._flush(name)

    # --- stream completion --------------------------------------------------------------------
    def _on_trace(self, message: AirbyteMessage) -> None:
        trace = message.trace
        assert trace is not None
        if trace.type != TraceType.STREAM_STATUS or trace.stream_status is None:
            return
        self.saw_stream_status = True
        name = trace.stream_status.stream_descriptor.name
        plan = self.plans.get(name)
        if trace.stream_status.status == AirbyteStreamStatus.COMPLETE and plan and plan.staged:
            self._complete_staged(plan)

    def _complete_staged(self, plan: StreamPlan) -> None:
        self._flush(plan.name)
        self._wait_committed()
        self.store.swap_stage(plan.name)
        self.completed.add(plan.name)

    # --- health -------------------------------------------------------------------------------
    def _refresh(self, include_time_sensitive: bool) -> None:
        self._wait_committed()
        self._stop_committer()
        started = self.monotonic()
        as_of = self.as_of()
        result = self.ingestor.refresh_pending(as_of, include_time_sensitive)
        self.stats.refreshed += result.refreshed
        self.stats.refresh_failures += len(result.failed)
        self.last_refresh = self.monotonic()
        self.stats.refresh_seconds += self.last_refresh - started
