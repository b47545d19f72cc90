"""A fixed-size summary of a set of object ids from which the ids that differ between two such sets can
be read back (an invertible Bloom lookup table). Pure: no I/O.

Without events, the source cannot ask Stripe "what changed". It can list what may still change (open
invoices, subscriptions not canceled, every customer) but not what left those lists since the last
sync (paid, canceled, deleted). Keeping the ids of the listed objects in the state would grow with the
account; this summary stays a few kilobytes, and subtracting today's summary from the last one gives
back the ids that left, as long as they are fewer than about half the cells (a few more can differ:
the peeling succeeds up to about 80% of the cells, and fails safely beyond).

Each id is added to one cell in each of three parts of the table: a cell holds how many ids it got,
the sum of those ids (as integers) and the sum of their 64-bit checks. A cell holding one id (maybe
more than once: a resumed read can list an object twice) names it, as its sums divide by its count
into an id whose check matches; taking that id out of its other cells frees more."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Any

CELLS = 300  # three parts of 100: about 150 departures between two syncs can be named
_PARTS = 3


def _digest(object_id: str) -> tuple[int, list[int], int]:
    """The id as an integer, three numbers that pick its cell in each part, and its check."""
    raw = object_id.encode()
    digest = hashlib.blake2b(raw, digest_size=20).digest()
    check = int.from_bytes(digest[:8], "big")
    return (
        int.from_bytes(raw, "big"),
        [int.from_bytes(digest[8 + 4 * i : 12 + 4 * i], "big") for i in range(3)],
        check,
    )


class IdSketch:
    def __init__(self, cells: int = CELLS) -> None:
        self.part = max(1, cells // _PARTS)
        size = self.part * _PARTS
        self.counts = [0] * size
        self.keys = [0] * size
        self.checks = [0] * size

    def _cells(self, spreads: list[int]) -> list[int]:
        return [i * self.part + spread % self.part for i, spread in enumerate(spreads)]

    def add(self, object_id: str) -> None:
        key, spreads, check = _digest(object_id)
        for cell in self._cells(spreads):
            self.counts[cell] += 1
            self.keys[cell] += key
            self.checks[cell] += check

    def add_all(self, object_ids: Iterable[str]) -> IdSketch:
        for object_id in object_ids:
            self.add(object_id)
        return self

    def departed(self, now: IdSketch) -> list[str] | None:
        """The ids in this (earlier) set that are not in `now`; None when too many ids differ to name
        them all. Ids only in `now` are taken out too, but not returned."""
        if len(now.counts) != len(self.counts):
            return None
        counts = [a - b for a, b in zip(self.counts, now.counts, strict=True)]
        keys = [a - b for a, b in zip(self.keys, now.keys, strict=True)]
        checks = [a - b for a, b in zip(self.checks, now.checks, strict=True)]
        found: list[str] = []
        progress = True
        while progress:
            progress = False
            for cell, count in enumerate(counts):
                if count == 0 or keys[cell] % count or checks[cell] % count:
                    continue
                object_id = _as_id(keys[cell] // count)
                if object_id is None:
                    continue
                key, spreads, check = _digest(object_id)
                cells = self._cells(spreads)
                if check != checks[cell] // count or cell not in cells:
                    continue
                for other in cells:
                    counts[other] -= count
                    keys[other] -= count * key
                    checks[other] -= count * check
                if count > 0:
                    found.append(object_id)
                progress = True
        if any(counts) or any(keys) or any(checks):
            return None
        return found

    # ---- in the connector state ----------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "cells": len(self.counts),
            "counts": self.counts,
            "keys": _pack(self.keys),
            "checks": _pack(self.checks),
        }

    @classmethod
    def from_state(cls, blob: object) -> IdSketch | None:
        """The sketch a state holds, or None when it holds none or something else."""
        if not isinstance(blob, dict):
            return None
        try:
            size = int(blob["cells"])
            counts = [int(c) for c in blob["counts"]]
            keys, checks = _unpack(blob["keys"], size), _unpack(blob["checks"], size)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        sketch = cls(size)
        if not len(counts) == len(sketch.counts) == size:
            return None
        sketch.counts, sketch.keys, sketch.checks = counts, keys, checks
        return sketch


def _as_id(key: int) -> str | None:
    if key <= 0:
        return None
    try:
        return key.to_bytes((key.bit_length() + 7) // 8, "big").decode()
    except UnicodeDecodeError:
        return None


def _pack(numbers: list[int]) -> dict[str, Any]:
    """Non-negative integers as one base64 string of equal-width big-endian numbers."""
    width = max(1, *((n.bit_length() + 7) // 8 for n in numbers))
    data = base64.b64encode(b"".join(n.to_bytes(width, "big") for n in numbers)).decode()
    return {"width": width, "data": data}


def _unpack(packed: Any, size: int) -> list[int]:
    width = int(packed["width"])
    raw = base64.b64decode(packed["data"], validate=True)
    if width < 1 or len(raw) != size * width:
        raise ValueError("not a packed list of that size")
    return [int.from_bytes(raw[i * width : (i + 1) * width], "big") for i in range(size)]
