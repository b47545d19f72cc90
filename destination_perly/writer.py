"""The Airbyte side of the destination: messages in, committed rows and acknowledged state out.

- Records are buffered per stream, bounded by records and bytes per stream and by bytes overall;
  a full buffer is flushed alone, in one transaction, and the other buffers are left untouched.
- A STATE message is echoed unchanged once the records it covers are committed: for a per-stream
  state, that stream's buffer; for a GLOBAL or legacy state, every buffer. A failed commit raises
  before the echo, so uncommitted data is never acknowledged. On a store whose commits rewrite the
  pages they touch (SQLite), while the input says the next messages have already arrived
  (`more_waiting`, the reader process), a state waits for the next commit (at most
  `max_state_delay_s`): one commit then covers several states. On a store that pipelines statements
  (PostgreSQL), a flush is sent without waiting for the server: the writer reads on while the server
  commits it, confirms the commit before the next flush (or at once when no more input is waiting)
  and only then echoes the states it covers.
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
- Bad input never stops a sync and never reaches the store: a line that is not an Airbyte message is
  skipped with a warning; a record that cannot be stored as it is (no id, not valid UTF-8, NaN or a
  lone surrogate, a timestamp beyond 64 bits, a stream the catalog does not configure) is skipped,
  counted and logged as an error naming its stream, id and line, so it can be looked into and
  synced again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, suppress
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
from destination_perly.store.base import Row, holds_nul, table_for_stream, version_beyond_int64, without_nul

logger = logging.getLogger("airbyte")


class RawRecord(NamedTuple):
    """A RECORD message as parsed JSON: the write loop's fast path (no protocol model per record)."""

    stream: str
    data: Any
    line: int  # its line of the input, 1-based, for messages about it


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
    """stdin lines to messages, one per line, as the CDK does, except that RECORD lines become
    `RawRecord`s: building the CDK's model for each record costs more than parsing its JSON. Anything
    else, or a RECORD the fast path does not recognise, goes through the CDK's serializer (which
    validates it). A line that is not a message is skipped, and never quoted (it may hold customer
    data)."""
    for number, line in enumerate(lines, 1):
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield _unreadable(line, number)
            continue
        is_record = isinstance(message, dict) and message.get("type") == "RECORD"
        if is_record:
            record = message.get("record")
            if isinstance(record, dict) and isinstance(record.get("stream"), str) and "data" in record:
                data = record["data"]
                if holds_nul(line):
                    # Too deep to walk: left as it is, to be skipped as too deep to store.
                    with suppress(RecursionError):
                        data = without_nul(data)
                yield RawRecord(record["stream"], data, number)
                continue
        try:
            yield AirbyteMessageSerializer.load(message)
        except ValueError:  # valid JSON that is not a message (the serializer's SchemaValidationError)
            if is_record:
                yield Skipped(f"skipped a malformed RECORD at line {number} of the input", record=True)
            else:
                yield _not_a_message(number)


def _not_a_message(number: int) -> Skipped:
    return Skipped(f"ignoring line {number} of the input: not an Airbyte message", record=False)


def _unreadable(line: str | bytes, number: int) -> Skipped:
    """A line orjson cannot parse: not JSON, or a message orjson refuses to store as it is. Such a
    message is read leniently to name the record it held: bytes that are not UTF-8 are replaced, and
    Python's own parser takes what orjson refuses (a lone UTF-16 surrogate escape, NaN, Infinity, a
    number beyond a double), which other sources' serializers can write."""
    text = line
    why = "values JSON cannot carry (a lone UTF-16 surrogate, NaN or a number out of range)"
    if isinstance(line, bytes):
        try:
            text = line.decode()
        except UnicodeDecodeError:
            text, why = line.decode(errors="replace"), "bytes that are not valid UTF-8"
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return _not_a_message(number)
    record = message.get("record") if isinstance(message, dict) and message.get("type") == "RECORD" else None
    if not isinstance(record, dict):
        return _not_a_message(number)
    return _skipped_record(record.get("stream"), record.get("data"), number, why)


def _skipped_record(stream: object, data: object, line: int, why: str) -> Skipped:
    record_id = data.get("id") if isinstance(data, dict) else None
    which = f"record {record_id!r}" if isinstance(record_id, str | int) else "a record"
    return Skipped(f"skipped {which} of stream {stream!r} at line {line} of the input: {why}", record=True)


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
    # The longest a state waits for its commit while more input keeps arriving (the buffer limits
    # above bound how much it covers).
    max_state_delay_s: float = 1.0


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

    def __call__(self, stream: str, data: object, line: int) -> PreparedRecord | Skipped:
        if stream not in self.generation_ids:
            # Its table could be another stream's (`customers_stage` is the customers stage table).
            return _skipped_record(stream, data, line, "the configured catalog has no such stream")
        record_id = data.get("id") if isinstance(data, dict) else None
        if isinstance(record_id, int) and not isinstance(record_id, bool):
            record_id = str(record_id)
        if not isinstance(data, dict) or not isinstance(record_id, str) or not record_id:
            shape = "not an object" if not isinstance(data, dict) else "no string id"
            return _skipped_record(stream, data, line, shape)
        too_far = version_beyond_int64(data)
        if too_far is not None:
            return _skipped_record(stream, data, line, f"`{too_far}` is beyond a 64-bit integer")
        if data["id"] is not record_id:  # an integer id, kept as text like Stripe's
            data = {**data, "id": record_id}
        try:
            row, ids = self.prepare(stream, data, self.generation_ids[stream])
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes (254 levels)
            return _skipped_record(stream, data, line, f"it cannot be stored as JSON ({exc})")
        return PreparedRecord(stream, row, ids)


def plans_from_catalog(catalog: ConfiguredAirbyteCatalog) -> dict[str, StreamPlan]:
    """Raises ValueError when two streams would share a table (`x_stage` is also `x`'s stage table)."""
    owners: dict[str, str] = {}
    for configured in catalog.streams:
        name = configured.stream.name
        table = table_for_stream(name)
        for own in (table, f"{table}_stage"):
            if owners.setdefault(own, name) != name:
                raise ValueError(f"streams {owners[own]!r} and {name!r} would share the table {own}")
    return {
        s.stream.name: StreamPlan(
            name=s.stream.name,
            sync_mode=s.destination_sync_mode or DestinationSyncMode.append,
            generation_id=s.generation_id,
            minimum_generation_id=s.minimum_generation_id,
        )
        for s in catalog.streams
    }


@dataclass
class HeldState:
    """A state read but not yet echoed, and what must be committed before it is."""

    message: AirbyteMessage
    unflushed: set[str]  # the streams whose buffers it covers, not yet flushed
    committing: bool = False  # a flush it covers is sent, its commit not yet confirmed

    @property
    def ready(self) -> bool:
        return not self.unflushed and not self.committing


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
        # States read but not yet echoed, in order: on SQLite, while more input is already waiting, a
        # state's commit waits to be shared with what follows (one commit, not one per state: each
        # commit rewrites every index page it touched).
        self.held: list[HeldState] = []
        self.held_since = 0.0
        self.written: Counter[str] = Counter()  # rows committed per stream since the last refresh
        self.preparer = RecordPreparer(ingestor, self.plans)
        # The batch holding the last flush while its commit is on its way (`Store.flushes_pipelined`).
        self.sent: ExitStack | None = None

    # --- the message loop ---------------------------------------------------------------------
    def write(self, messages: Iterable[InputMessage]) -> Iterator[AirbyteMessage]:
        """Accepts the CDK's messages or `parse_input_lines` output (records as `RawRecord`)."""
        try:
            yield from self._write(messages)
        finally:
            if self.sent is not None:  # stopped early (the caller may close the store next)
                with suppress(Exception):
                    self.sent.close()

    def _write(self, messages: Iterable[InputMessage]) -> Iterator[AirbyteMessage]:
        self.store.ensure_schema()
        for plan in self.plans.values():
            if plan.staged:
                self.store.begin_stage(plan.name, plan.generation_id)
        more_waiting: Callable[[], bool] = getattr(messages, "more_waiting", None) or (lambda: False)
        # A state may wait for the input that follows only where fewer commits cost less (the store).
        combine = self.store.commits_rewrite_pages
        iterator = iter(messages)
        line = 0  # one message per input line, so a message's position is its line
        while True:
            try:
                message = next(iterator)
            except StopIteration:
                break
            except Exception:  # the input failed: what the held states cover arrived whole
                self._flush_held()
                self._wait_for_commit()
                yield from self._release_states()
                raise
            line += 1
            if isinstance(message, RawRecord):
                message = self.preparer(message.stream, message.data, message.line)
            elif isinstance(message, AirbyteMessage) and message.type == Type.RECORD and message.record:
                message = self.preparer(message.record.stream, message.record.data, line)
            if isinstance(message, PreparedRecord):
                self._add_record(message)
                if self.held and self.held[0].ready:  # a full buffer's flush covered a held state
                    yield from self._release_states()
            elif isinstance(message, Skipped):
                self.stats.malformed += message.record
                yield _log(Level.ERROR if message.record else Level.WARN, message.message)
            elif message.type == Type.STATE and message.state is not None:
                self._note_state_streams(message)
                self._hold_state(message)
                waiting = more_waiting()
                if combine and waiting and self.monotonic() - self.held_since < self.limits.max_state_delay_s:
                    continue  # the next messages are here already: commit them with these records
                self._flush_held()
                if not waiting:  # nothing to read meanwhile: echo the state as soon as it is committed
                    self._wait_for_commit()
                yield from self._release_states()
            elif message.type == Type.TRACE and message.trace is not None:
                self._on_trace(message)
                yield from self._release_states()  # a completed stream's flush may cover held states
        for name in list(self.buffers):
            self._flush(name)
        self._wait_for_commit()
        yield from self._release_states()
        if not self.saw_stream_status:
            # Without stream statuses, the end of input completes the streams that sent something;
            # one that sent nothing may never have started, so its live table is kept.
            for plan in self.plans.values():
                if plan.staged and plan.name not in self.completed and plan.name in self.heard_from:
                    self._complete_staged(plan)
        self._refresh(include_time_sensitive=True)
        yield _log(
            Level.INFO,
            f"destination-perly: {self.stats.records} records in {self.stats.flushes} flushes, "
            f"{self.stats.malformed} records skipped, {self.stats.states} states acknowledged, "
            f"{self.stats.refreshed} customers recomputed in {self.stats.refresh_seconds:.1f} s "
            f"({self.stats.refresh_failures} failed)",
        )

    # --- records ------------------------------------------------------------------------------
    def _add_record(self, record: PreparedRecord) -> None:
        stream, row = record.stream, record.row
        self.heard_from.add(stream)
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
        """Commits one stream's buffer in one transaction; other buffers are not touched."""
        buffer = self.buffers.get(stream)
        if buffer is None or not buffer.rows:
            return
        plan = self.plans[stream]
        self._wait_for_commit()  # one flush on its way at a time
        if self.store.flushes_pipelined:
            self.sent = ExitStack()
            self.sent.enter_context(self.store.batched())  # left open: the commit is only sent
        self.ingestor.upsert_rows({stream: buffer.rows}, buffer.touched, stage=plan.staged)
        self.total_bytes -= buffer.bytes
        del self.buffers[stream]
        self.stats.flushes += 1
        self.written[stream] += len(buffer.rows)
        for held in self.held:
            if stream in held.unflushed:
                held.unflushed.discard(stream)
                held.committing = self.sent is not None

    def _wait_for_commit(self) -> None:
        """Until the server has answered the flush sent last, if any: raises what failed (the states it
        covers are then never echoed). Every other use of the store comes after it."""
        if self.sent is None:
            return
        sent, self.sent = self.sent, None
        sent.close()
        for held in self.held:
            held.committing = False

    # --- state --------------------------------------------------------------------------------
    def _hold_state(self, message: AirbyteMessage) -> None:
        """Keeps a state until the buffers it covers are committed (`_flush` crosses them off)."""
        state = message.state
        assert state is not None
        if state.type == AirbyteStateType.STREAM and state.stream is not None:
            covered = {state.stream.stream_descriptor.name} & set(self.buffers)
        else:  # GLOBAL or legacy: the state covers every stream
            covered = set(self.buffers)
        if not self.held:
            self.held_since = self.monotonic()
        # A flush still on its way holds records before this state (a full buffer sent just now):
        # the state waits for that commit too.
        self.held.append(HeldState(message, covered, committing=self.sent is not None))

    def _flush_held(self) -> None:
        for held in list(self.held):
            for name in sorted(held.unflushed):
                self._flush(name)

    def _release_states(self) -> Iterator[AirbyteMessage]:
        """Echoes, in order, the held states whose records are all committed."""
        released = False
        while self.held and self.held[0].ready:
            message = self.held.pop(0).message
            self.stats.states += 1
            released = True
            yield message
        if released and self.monotonic() - self.last_refresh >= self.limits.refresh_interval_s:
            self._refresh(include_time_sensitive=False)

    def _note_state_streams(self, message: AirbyteMessage) -> None:
        state = message.state
        assert state is not None
        if state.type == AirbyteStateType.STREAM and state.stream is not None:
            self.heard_from.add(state.stream.stream_descriptor.name)

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
        self._wait_for_commit()
        self.store.swap_stage(plan.name)
        self.completed.add(plan.name)

    # --- health -------------------------------------------------------------------------------
    def _refresh(self, include_time_sensitive: bool) -> None:
        started = self.monotonic()
        self._wait_for_commit()
        self.store.analyze_grown(self.written)  # the refresh reads by customer through the indexes
        self.written.clear()
        as_of = self.as_of()
        result = self.ingestor.refresh_pending(as_of, include_time_sensitive)
        self.stats.refreshed += result.refreshed
        self.stats.refresh_failures += len(result.failed)
        self.last_refresh = self.monotonic()
        self.stats.refresh_seconds += self.last_refresh - started
