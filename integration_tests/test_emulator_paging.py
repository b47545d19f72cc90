"""List paging over the emulator's store, for any mix of creation times, deletions and page sizes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from integration_tests.stripe_emulator.model import StripeObject
from integration_tests.stripe_emulator.store import Store

objects_strategy = st.lists(st.tuples(st.integers(0, 30), st.booleans()), min_size=0, max_size=60)


def make_store(spec: list[tuple[int, bool]]) -> Store:
    store = Store("things")
    for seq, (created, deleted) in enumerate(spec):
        obj = StripeObject(f"obj_{seq}", created, seq)
        obj.deleted = deleted
        store.add(obj)  # out of order on purpose: the store sorts lazily
    return store


def expected(spec: list[tuple[int, bool]], low: int | None = None, high: int | None = None) -> list[str]:
    live = [
        (created, seq)
        for seq, (created, deleted) in enumerate(spec)
        if not deleted and (low is None or created >= low) and (high is None or created <= high)
    ]
    return [f"obj_{seq}" for created, seq in sorted(live, reverse=True)]


@settings(max_examples=150, deadline=None)
@given(objects_strategy, st.integers(1, 7))
def test_given_any_book_when_paging_forward_then_every_live_object_once_newest_first(
    spec: list[tuple[int, bool]], limit: int
) -> None:
    store = make_store(spec)
    seen: list[str] = []
    cursor = None
    while True:
        page, has_more = store.page(limit, starting_after=cursor)
        assert len(page) <= limit
        seen += [obj.id for obj in page]
        if not has_more:
            break
        assert len(page) == limit
        cursor = page[-1]
    assert seen == expected(spec)


@settings(max_examples=150, deadline=None)
@given(objects_strategy, st.integers(1, 7))
def test_given_the_oldest_object_when_paging_backward_then_the_same_objects(
    spec: list[tuple[int, bool]], limit: int
) -> None:
    store = make_store(spec)
    everything = expected(spec)
    if not everything:
        return
    oldest = store.get(everything[-1])
    seen: list[str] = [everything[-1]]
    cursor = oldest
    while True:
        page, has_more = store.page(limit, ending_before=cursor)
        seen = [obj.id for obj in page] + seen
        if not has_more:
            break
        cursor = page[0]
    assert seen == everything


@settings(max_examples=150, deadline=None)
@given(objects_strategy, st.integers(0, 30), st.integers(0, 30))
def test_given_a_created_range_when_listing_then_only_that_range(
    spec: list[tuple[int, bool]], low: int, high: int
) -> None:
    store = make_store(spec)
    page, has_more = store.page(100, created_min=low, created_max=high)
    assert [obj.id for obj in page] == expected(spec, low, high)
    assert not has_more
