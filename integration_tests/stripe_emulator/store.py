"""One resource's objects, kept oldest-first by (created, seq) so new objects append cheaply.

Lists are served newest first by walking the sorted list backwards. Deleted objects stay in the list
(and are skipped) so positions remain stable; retrieve still finds them through the id index.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Any

from .model import StripeObject

Predicate = Callable[[Any], bool]


def sort_key(obj: StripeObject) -> tuple[int, int]:
    return (obj.created, obj.seq)


class Store:
    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: list[StripeObject] = []
        self.by_id: dict[str, StripeObject] = {}
        self._unsorted = False

    def add(self, obj: StripeObject) -> None:
        objects = self.objects
        if objects and not self._unsorted:
            last = objects[-1]
            if last.created > obj.created or (last.created == obj.created and last.seq > obj.seq):
                self._unsorted = True
        objects.append(obj)
        self.by_id[obj.id] = obj

    def sorted(self) -> list[StripeObject]:
        if self._unsorted:
            self.objects.sort(key=sort_key)  # nearly sorted: timsort makes this linear
            self._unsorted = False
        return self.objects

    def get(self, obj_id: str) -> StripeObject | None:
        return self.by_id.get(obj_id)

    def drop_before(self, created: int) -> int:
        """Forget objects created before `created` (event retention). Returns how many went."""
        objects = self.sorted()
        cut = bisect_left(objects, (created, -1), key=sort_key)
        for obj in objects[:cut]:
            del self.by_id[obj.id]
        del objects[:cut]
        return cut

    def live(self) -> Iterator[StripeObject]:
        """Newest first, deleted objects left out."""
        for obj in reversed(self.sorted()):
            if not obj.deleted:
                yield obj

    def page(
        self,
        limit: int,
        *,
        starting_after: StripeObject | None = None,
        ending_before: StripeObject | None = None,
        created_min: int | None = None,
        created_max: int | None = None,
        match: Predicate | None = None,
    ) -> tuple[list[StripeObject], bool]:
        """A newest-first page of at most `limit` objects and whether more follow in that direction."""
        objects = self.sorted()
        low = 0 if created_min is None else bisect_left(objects, (created_min, -1), key=sort_key)
        high = (
            len(objects)
            if created_max is None
            else bisect_right(objects, (created_max, 1 << 62), key=sort_key)
        )
        found: list[StripeObject] = []
        if ending_before is not None:
            # Walk towards newer objects, then flip so the page is still newest first.
            start = max(low, bisect_right(objects, sort_key(ending_before), key=sort_key))
            index = start
            while index < high and len(found) <= limit:
                obj = objects[index]
                if not obj.deleted and (match is None or match(obj)):
                    found.append(obj)
                index += 1
            has_more = len(found) > limit
            found = found[:limit]
            found.reverse()
            return found, has_more
        if starting_after is not None:
            high = min(high, bisect_left(objects, sort_key(starting_after), key=sort_key))
        index = high - 1
        while index >= low and len(found) <= limit:
            obj = objects[index]
            if not obj.deleted and (match is None or match(obj)):
                found.append(obj)
            index -= 1
        has_more = len(found) > limit
        return found[:limit], has_more
