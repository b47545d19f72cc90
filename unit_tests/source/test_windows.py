"""The created-window arithmetic: coverage without overlap, resume gaps, adaptive cuts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from source_perly_stripe.windows import DAY, gaps, initial_windows, merge, plan_split, split

intervals = st.lists(
    st.tuples(st.integers(0, 1_000), st.integers(0, 1_000)).map(sorted).map(tuple), max_size=12
)


def covered(windows: list[tuple[int, int]]) -> set[int]:
    return {second for a, b in windows for second in range(a, b)}


@given(intervals)
def test_given_any_intervals_when_merged_then_same_seconds_sorted_and_disjoint(
    parts: list[tuple[int, int]],
) -> None:
    merged = merge(parts)

    assert covered(merged) == covered(parts)
    assert all(a < b for a, b in merged)
    assert all(prev[1] < nxt[0] for prev, nxt in zip(merged, merged[1:], strict=False))


@given(intervals, st.integers(0, 500), st.integers(500, 1_000))
def test_given_done_windows_when_gaps_then_gaps_and_done_cover_range_exactly_once(
    done: list[tuple[int, int]], lower: int, upper: int
) -> None:
    missing = gaps(lower, upper, done)

    everything = set(range(lower, upper))
    assert covered(missing) == everything - covered(done)
    assert sum(b - a for a, b in missing) == len(covered(missing)), "gaps never overlap"


@given(st.integers(0, 10_000), st.integers(1, 10_000), st.integers(1, 64))
def test_given_range_when_split_then_pieces_are_contiguous_and_cover_it(
    start: int, length: int, parts: int
) -> None:
    pieces = split((start, start + length), parts)

    assert pieces[0][0] == start
    assert pieces[-1][1] == start + length
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    assert len(pieces) <= parts


def test_given_fifteen_years_when_initial_windows_then_capped_count() -> None:
    windows = initial_windows((0, 15 * 365 * DAY), max_days=365, max_parts=8)

    assert len(windows) == 8
    assert windows[0][0] == 0
    assert windows[-1][1] == 15 * 365 * DAY


def test_given_sparse_page_when_plan_split_then_no_cut() -> None:
    # 100 records over 100 days: the rest of a 200-day window holds about one page.
    assert plan_split(0, 200 * DAY, 100 * DAY, 100, target_pages=8, max_parts=16) == []


def test_given_dense_page_when_plan_split_then_cuts_near_the_page_and_keeps_one_window_for_the_far_past() -> (
    None
):
    # 100 records in 1,000 s: a page per 1,000 s, so about 8,000 s per piece of 8 pages.
    cuts = plan_split(0, 1_000_000, 999_001, 100, target_pages=8, max_parts=4)

    assert cuts == [975_001, 983_001, 991_001]
    assert all(0 < c < 999_001 for c in cuts)
