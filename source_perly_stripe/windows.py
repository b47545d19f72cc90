"""Pure helpers for `created` windows: half-open [start, end) intervals of unix seconds."""

from __future__ import annotations

import math

Interval = tuple[int, int]

DAY = 86_400


def merge(intervals: list[Interval]) -> list[Interval]:
    """Sorted, non-overlapping union; touching intervals join ([1,5) + [5,9) = [1,9))."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def gaps(lower: int, upper: int, done: list[Interval]) -> list[Interval]:
    """The parts of [lower, upper) not covered by `done`."""
    missing: list[Interval] = []
    cursor = lower
    for start, end in merge(done):
        if end <= cursor or start >= upper:
            continue
        if start > cursor:
            missing.append((cursor, min(start, upper)))
        cursor = max(cursor, end)
    if cursor < upper:
        missing.append((cursor, upper))
    return missing


def split(interval: Interval, parts: int) -> list[Interval]:
    """Cut into `parts` equal-ish windows, newest last; never narrower than one second."""
    start, end = interval
    parts = max(1, min(parts, end - start))
    step = (end - start) / parts
    edges = [start + round(step * i) for i in range(parts)] + [end]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if a < b]


def initial_windows(interval: Interval, *, max_days: int, max_parts: int) -> list[Interval]:
    """A first cut of a range to read: windows of at most `max_days`, at most `max_parts` of them.
    Dense windows split themselves later, after their first page shows how dense they are."""
    length = interval[1] - interval[0]
    parts = min(max_parts, max(1, math.ceil(length / (max_days * DAY))))
    return split(interval, parts)


# How full a window cut by density is planned to end (see `plan_cut`).
LAST_PAGE_FILL = 0.75


def plan_cut(
    low: int, oldest: int, density: float, *, open_ended: bool, keep_pages: int, page_size: int
) -> int | None:
    """Where to cut the unread rest [low, oldest) of a window read newest-first, when a reader is free
    to take part of it. Returns c (low < c < oldest): a new window reads [low, c) and this one keeps
    [c, oldest]; None: keep paging as one.

    Each window ends on a partial page, so every cut costs half a page on average: a cut is made only
    for pieces of at least `keep_pages` pages. `density` (records per second) is measured on the
    window's own pages. An open-ended window (nothing read below it: how dense the far past is, is
    unknown) keeps about `keep_pages` pages next to its pages, where the density is known, and hands
    the far past on as a new open-ended window; cutting more pieces at once by that density would make
    empty windows where the account is younger than it suggests. A bounded one (cut where the density
    was measured) is cut about in the middle, into halves of at least `keep_pages / 2` pages. Either
    keeps whole pages and one three quarters full, by the density."""
    span = oldest - low
    # A bounded window's halves need only half as many pages: its density is known, and cutting it is
    # what keeps every reader busy at the end of a read.
    least = 2 * keep_pages if open_ended else keep_pages
    if span <= 2 or density <= 0 or density * span / page_size < least:
        return None
    # The pages kept, planned to end on a page three quarters full: aiming at a whole number of pages,
    # an estimate a few records short (1,613 and 1,607 invoices where 1,600 were planned) spills them
    # onto a page of their own.
    kept = keep_pages if open_ended else math.floor(density * span / 2 / page_size)
    cut = oldest - int((kept - 1 + LAST_PAGE_FILL) * page_size / density)
    return cut if low < cut < oldest else None
