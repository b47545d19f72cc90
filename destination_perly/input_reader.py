"""Parsing and preparing the input in a helper process while the main process writes.

A sync's time is split between turning stdin lines into rows (JSON parsing, re-serialising each
object, finding its customers) and committing rows to the store, and one core does one at a time.
`read_in_helper` forks a process that reads the lines, parses and prepares them and sends the results
in order, in batches, through a pipe; the main process only buffers and commits. Acknowledgement does
not change: the writer still sees every message in input order and echoes a state only after
committing what it covers.

A batch is sent at once when it holds anything but records (a state is never held back waiting for
more input), else when full. A thread of the main process receives batches into a bounded queue, so
the reader keeps going while a commit or checkpoint holds the writer, and blocks when the writer
falls further behind: memory stays bounded. If the reader fails or dies, the writer raises: nothing
after the failure is written or acknowledged.
"""

from __future__ import annotations

import fcntl
import gc
import io
import multiprocessing
import os
import pickle
import queue
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from destination_perly.store.base import Row
from destination_perly.writer import InputMessage, PreparedRecord, RawRecord, Skipped, parse_input_lines

BATCH_ITEMS = 500
BATCH_BYTES = 256 * 1024
# The most a pipe may hold without privileges on Linux (the default, 64 KB, stalled the reader).
PIPE_BYTES = 1024 * 1024
# Batches received and not yet written: about 8 MB at most.
QUEUED_BATCHES = 32
# A message's length, before the message (a pickle) in the pipe.
FRAME_HEAD = struct.Struct("!Q")
# How long the reader may take to exit after sending its last batch before it is killed.
EXIT_TIMEOUT_SECONDS = 10.0

Prepare = Callable[[str, object, int], PreparedRecord | Skipped]


class InputReaderError(RuntimeError):
    """The input reader process failed; nothing after its failure was written."""


def can_read_in_helper() -> bool:
    """A second core to run on, and fork to start the process with (it shares our state)."""
    return (os.cpu_count() or 1) > 1 and "fork" in multiprocessing.get_all_start_methods()


def _send(fd: int, message: object) -> None:
    """One message down the pipe: its pickle's length, then the pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    for part in (FRAME_HEAD.pack(len(payload)), payload):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _read_exactly(pipe: io.FileIO, size: int) -> bytearray | None:
    """`size` bytes read straight into one buffer (multiprocessing's Connection copied every batch
    twice more on its way in); None when the pipe ends first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        read = pipe.readinto(view[done:])
        if not read:
            return None
        done += read
    return buffer


def _reader_loop(fd: int, lines: Iterable[str | bytes], prepare: Prepare) -> None:
    """The reader process: lines -> batches of prepared records and other messages, then None."""
    batch: list[Any] = []
    size = 0
    try:
        for message in parse_input_lines(lines):
            if isinstance(message, RawRecord):
                message = prepare(message.stream, message.data, message.line)
            if isinstance(message, PreparedRecord):
                # Sent as plain tuples: pickling named tuples cost four times as much.
                batch.append((message.stream, tuple(message.row), message.customer_ids))
                size += len(message.row.data)
                if len(batch) < BATCH_ITEMS and size < BATCH_BYTES:
                    continue
            else:
                batch.append(message)
            _send(fd, batch)
            batch, size = [], 0
        _send(fd, batch)
        _send(fd, None)  # the end of the input
    except BaseException:
        try:
            _send(fd, traceback.format_exc())
        except OSError:  # the writer has stopped listening
            pass
    finally:
        os.close(fd)


def _receive(pipe: io.FileIO, received: queue.Queue[bytearray | None]) -> None:
    """The main process's receiving thread (reads release the lock the writer's thread needs)."""
    try:
        while (head := _read_exactly(pipe, FRAME_HEAD.size)) is not None:
            message = _read_exactly(pipe, FRAME_HEAD.unpack(head)[0])
            if message is None:  # the reader stopped part-way through a message
                break
            received.put(message)
    except OSError:
        pass
    received.put(None)


class HelperInput:
    """The messages `parse_input_lines` would give, records already prepared, read by a forked
    process; `more_waiting` tells whether the next message has already arrived."""

    def __init__(self, lines: Iterable[str | bytes], prepare: Prepare) -> None:
        self.lines = lines
        self.prepare = prepare
        self._received: queue.Queue[bytearray | None] = queue.Queue(maxsize=QUEUED_BATCHES)
        self._left = 0  # messages of the current batch not yet handed out

    def more_waiting(self) -> bool:
        return self._left > 0 or not self._received.empty()

    def __iter__(self) -> Iterator[InputMessage]:
        return self._messages()

    def _messages(self) -> Iterator[InputMessage]:
        """From the call on, only the reader process may read `lines`."""
        # Anything buffered for stdout must go out once, from here, not again from the child.
        sys.stdout.flush()
        sys.stderr.flush()
        context = multiprocessing.get_context("fork")
        reading, sending = os.pipe()
        receiver = io.FileIO(reading, "r")
        try:
            fcntl.fcntl(sending, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # a lower system limit: the default size works, only slower
            pass
        process = context.Process(target=_reader_loop, args=(sending, self.lines, self.prepare), daemon=True)
        # multiprocessing closes sys.stdin in a new process, and `lines` is usually stdin itself.
        stdin, sys.stdin = sys.stdin, None
        # The child's collector must not walk (and so copy, page by page) the heap it shares with us.
        gc.freeze()
        try:
            process.start()
        finally:
            gc.unfreeze()
            sys.stdin = stdin
        os.close(sending)  # the reader's now: the pipe ends when the reader closes it or dies
        received = self._received
        receiving = threading.Thread(target=_receive, args=(receiver, received), daemon=True)
        receiving.start()
        finished = False
        try:
            while True:
                raw = received.get()
                if raw is None:
                    process.join(timeout=EXIT_TIMEOUT_SECONDS)
                    raise InputReaderError(
                        f"the input reader process stopped unexpectedly (exit code {process.exitcode})"
                    )
                batch = pickle.loads(raw)  # noqa: S301 - sent by our own forked process
                if batch is None:
                    finished = True
                    return
                if isinstance(batch, str):
                    raise InputReaderError(f"reading the input failed:\n{batch}")
                self._left = len(batch)
                for item in batch:
                    self._left -= 1
                    if type(item) is tuple:  # a prepared record, as sent
                        stream, row, ids = item
                        yield PreparedRecord(stream, Row._make(row), ids)
                    else:
                        yield item
        finally:
            if finished:
                process.join(timeout=EXIT_TIMEOUT_SECONDS)
            if process.is_alive():  # stuck, or the writer stopped early (an error): the rest is not needed
                process.kill()
                process.join()
            while receiving.is_alive():  # let the thread see the end of the pipe and stop
                try:
                    received.get(timeout=0.1)
                except queue.Empty:
                    pass
            receiver.close()


def read_in_helper(lines: Iterable[str | bytes], prepare: Prepare) -> HelperInput:
    """`lines` parsed and prepared by a forked reader process, once iterated."""
    return HelperInput(lines, prepare)
