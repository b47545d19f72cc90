"""How many requests a first sync makes, and when: the reader against lists held in memory, answered in
2 ms (no HTTP, so that books of tens of thousands of objects read in a moment)."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from typing import Any

from source_perly_stripe.reader import QUEUED_WHILE_READ, ReadSettings, SyncReader
from source_perly_stripe.streams import STREAMS_BY_NAME
from source_perly_stripe.windows import DAY

from .builders import DEFAULT_NOW

NOW = DEFAULT_NOW


class ListsInMemory:
    """Stripe's list endpoints over objects that carry an id and `created` only: `created` filters,
    `starting_after`, `has_more`, newest first; the events list is empty (the probe)."""

    def __init__(self, created: dict[str, list[int]]) -> None:
        # Per path, newest first: (-created, id), so that bisect finds a `created` bound.
        self.lists = {
            f"/v1/{name}": sorted((-c, f"{name[:3]}_{i:06d}") for i, c in enumerate(times))
            for name, times in created.items()
        }
        self.lock = threading.Lock()
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str, params: Any = ()) -> dict[str, Any]:
        query = dict(params)
        with self.lock:
            self.asked.append((path, query))
        time.sleep(0.002)  # a round trip, short: the windows' threads take turns as they do with Stripe
        items = self.lists.get(path, [])
        first = (
            bisect.bisect_left(items, (-int(query["created[lt]"]) + 1, "")) if "created[lt]" in query else 0
        )
        last = (
            bisect.bisect_left(items, (-int(query["created[gte]"]) + 1, ""))
            if "created[gte]" in query
            else len(items)
        )
        if "starting_after" in query:
            first = next(i for i in range(first, last) if items[i][1] == query["starting_after"]) + 1
        limit = int(query.get("limit", 10))
        data = [{"id": i, "object": "x", "created": -c} for c, i in items[first : min(last, first + limit)]]
        return {"object": "list", "url": path, "has_more": last - first > limit, "data": data}

    def server_now(self) -> int:
        return NOW

    def every_id(self) -> Counter[str]:
        return Counter(object_id for items in self.lists.values() for _, object_id in items)

    def list_requests(self, path: str) -> int:
        return sum(1 for asked, query in self.asked if asked == path and "created[gte]" in query)


def first_sync(stripe: ListsInMemory, *names: str) -> SyncReader:
    return SyncReader(stripe, [(STREAMS_BY_NAME[name], True) for name in names], {}, ReadSettings())


def emitted_ids(messages: list[Any]) -> Counter[str]:
    return Counter(m.record.data["id"] for m in messages if m.record is not None)


def test_given_a_small_stream_beside_a_large_one_then_it_is_read_as_one_window_without_an_empty_page() -> (
    None
):
    """1,000 customers (10 pages) beside 30,000 charges over the same two years: one window reads the
    customers before the charges' windows end, so handing its far past to another reader would only
    add a window end, here an empty page (the account is younger than where the cut would fall)."""
    customers = [NOW - 730 * DAY + i * 63_000 for i in range(1_000)]
    charges = [NOW - 730 * DAY + i * 2_100 + 1 for i in range(30_000)]
    stripe = ListsInMemory({"customers": customers, "charges": charges})
    reader = first_sync(stripe, "customers", "charges")

    emitted = emitted_ids(list(reader.read()))

    assert emitted == stripe.every_id(), "each object once"
    assert stripe.list_requests("/v1/customers") == 10, "ten full pages, no empty far past"
    assert stripe.list_requests("/v1/charges") <= 300 * 1.05


def test_given_a_small_stream_still_reading_when_the_others_are_done_then_it_hands_its_far_past_on() -> None:
    """Customers two a day for 15 years (109 pages) beside 15,000 charges of the last 90 days: the
    customers' window keeps its far past while the charges are read, then hands it on to the readers
    they left, instead of reading on alone at the end of the read."""
    customers = [NOW - i * DAY // 2 for i in range(10_900)]
    charges = [NOW - 90 * DAY + i * 518 for i in range(15_000)]
    stripe = ListsInMemory({"customers": customers, "charges": charges})
    reader = first_sync(stripe, "customers", "charges")

    emitted = emitted_ids(list(reader.read()))

    assert emitted == stripe.every_id(), "each object once"
    windows = {
        q["created[gte]"] for path, q in stripe.asked if path == "/v1/customers" and "created[gte]" in q
    }
    assert len(windows) > 1


def test_given_a_stream_alone_then_it_still_hands_its_far_past_to_free_readers() -> None:
    """The same customers alone are the whole read: their far past is handed on as before."""
    stripe = ListsInMemory({"customers": [NOW - 730 * DAY + i * 1_000 for i in range(5_000)]})
    reader = first_sync(stripe, "customers")

    emitted = emitted_ids(list(reader.read()))

    assert emitted == stripe.every_id(), "each object once"
    windows = {(q["created[gte]"], q.get("created[lt]")) for path, q in stripe.asked if "created[gte]" in q}
    assert len(windows) > 2


def test_given_a_read_begun_before_the_cdk_is_imported_then_its_requests_go_on_until_read_consumes() -> None:
    """`begin` runs while the CDK is imported (early.py) and nothing consumes the pages yet: they wait
    beyond the bound that holds once `read` consumes them, instead of every request stopping there
    for the rest of the import."""
    pages = 2 * QUEUED_WHILE_READ
    stripe = ListsInMemory({"customers": [NOW - 400 * DAY + i * 300 for i in range(100 * pages)]})
    reader = first_sync(stripe, "customers")

    reader.begin()
    asked, deadline = -1, time.monotonic() + 20
    while asked != len(stripe.asked) and time.monotonic() < deadline:
        asked = len(stripe.asked)
        time.sleep(0.3)
    read_before_consuming = stripe.list_requests("/v1/customers")
    emitted = emitted_ids(list(reader.read()))

    assert read_before_consuming >= pages, "every page read while nothing consumed them"
    assert emitted == stripe.every_id(), "each object once"
