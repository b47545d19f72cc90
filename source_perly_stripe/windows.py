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


def plan_split(
    window_start: int,
    page_newest: int,
    page_oldest: int,
    page_size: int,
    *,
    target_pages: int,
    max_parts: int,
) -> list[int]:
    """After a full page of a window read newest-first, decide where to cut the unread rest
    [window_start, page_oldest). Returns cut points c1 < c2 < ... (empty: keep paging as one).

    The page's density (records per second) says how wide a piece of about `target_pages` pages is.
    Pieces of that width are cut next to the page, where the density is known; whatever lies further
    back stays one window, which cuts itself in turn if its own first page shows it is dense (the
    density of the newest data says little about years before it). The caller keeps paging the top
    piece [c_last, ...) with its cursor and reads the lower pieces as new windows."""
    remaining_span = page_oldest - window_start
    if remaining_span <= 1:
        return []
    density = page_size / max(1, page_newest - page_oldest + 1)
    remaining_pages = density * remaining_span / max(1, page_size)
    if remaining_pages <= target_pages * 1.5:
        return []
    width = max(1, int(target_pages * page_size / density))
    parts = min(max_parts, math.ceil(remaining_pages / target_pages))
    cuts = [page_oldest - j * width for j in range(1, parts)]
    return sorted(c for c in cuts if window_start < c < page_oldest)
