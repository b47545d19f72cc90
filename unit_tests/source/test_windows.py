"""The created-window arithmetic: coverage without overlap, resume gaps, adaptive cuts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from source_perly_stripe.windows import DAY, gaps, initial_windows, merge, plan_cut, split

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


def test_given_too_few_pages_left_for_two_pieces_when_plan_cut_then_no_cut() -> None:
    # 0.01 records/s over the rest of the window: 20 pages, fewer than two pieces of 12.
    assert plan_cut(0, 200_000, 0.01, open_ended=True, keep_pages=12, page_size=100) is None


def test_given_open_ended_window_when_plan_cut_then_keeps_pages_next_to_the_page_and_hands_on_the_past() -> (
    None
):
    # 0.1 records/s: a page per 1,000 s, so the window keeps 11,750 s next to its last page: 11 full
    # pages and one three quarters full, planned (an estimate a little short does not spill a page).
    cut = plan_cut(0, 1_000_000, 0.1, open_ended=True, keep_pages=12, page_size=100)

    assert cut == 988_250


def test_given_bounded_window_when_plan_cut_then_halves_of_at_least_half_the_pages() -> None:
    # Its density is measured: the halves of 6 pages each are worth a reader at the end of a read. The
    # window keeps 5 full pages and one three quarters full; the piece handed on starts at the cut.
    assert plan_cut(988_000, 1_000_000, 0.1, open_ended=False, keep_pages=12, page_size=100) == 994_250
    assert plan_cut(986_500, 1_000_000, 0.1, open_ended=False, keep_pages=12, page_size=100) == 994_250
    assert plan_cut(989_000, 1_000_000, 0.1, open_ended=False, keep_pages=12, page_size=100) is None
