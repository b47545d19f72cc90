"""The record of Stripe API requests served: counts for all of them, the entries for the newest few.

A long benchmark or demo serves millions of requests; keeping every entry would grow memory without
bound. `len()` and indexes count every request since the start (request n is `log[n]`), so the usual
`before = len(log)` ... `log[before:]` keeps working as long as the slice is still held.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterator
from itertools import islice
from typing import Any, overload

DEFAULT_KEEP = 10_000

Entry = dict[str, Any]


class RequestLog:
    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError("keep at least one entry")
        self.keep = keep
        self._entries: deque[Entry] = deque(maxlen=keep)
        self._total = 0
        self._statuses: Counter[int] = Counter()
        self._lock = threading.Lock()  # handler threads append concurrently

    def append(self, entry: Entry) -> None:
        with self._lock:
            self._entries.append(entry)
            self._total += 1
            self._statuses[entry.get("status", 0)] += 1

    def __len__(self) -> int:
        return self._total

    @property
    def dropped(self) -> int:
        """How many of the oldest entries are no longer held."""
        return self._total - len(self._entries)

    def statuses(self) -> dict[int, int]:
        """Requests per HTTP status since the start (0: the connection was reset)."""
        with self._lock:
            return dict(self._statuses)

    def tail(self) -> list[Entry]:
        """The entries still held, oldest first."""
        with self._lock:
            return list(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.tail())

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | list[Entry]:
        """Index by request number since the start; slices skip entries no longer held."""
        with self._lock:
            total, held = self._total, len(self._entries)
            dropped = total - held
            if isinstance(index, slice):
                start, stop, step = index.indices(total)
                if step != 1:
                    raise ValueError("request log slices take no step")
                start, stop = max(start - dropped, 0), max(stop - dropped, 0)
                return list(islice(self._entries, start, stop))
            position = index + total if index < 0 else index
            if not 0 <= position < total:
                raise IndexError("request log index out of range")
            if position < dropped:
                raise IndexError(f"request {position} is no longer held (the last {self.keep} are)")
            return self._entries[position - dropped]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total = 0
            self._statuses.clear()
