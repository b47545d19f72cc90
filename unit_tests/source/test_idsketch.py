"""The id sketch the source keeps without events: it names the ids that left a set, from a few
kilobytes of state, or says it cannot."""

from __future__ import annotations

import json

from source_perly_stripe.idsketch import IdSketch


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}_{i:014d}" for i in range(count)]


def test_given_ids_that_left_and_new_ids_when_compared_then_exactly_those_that_left_are_named() -> None:
    before = ids("sub", 40_000)
    left = set(before[::400])  # 100 canceled since
    now = [i for i in before if i not in left] + ids("new", 120)

    named = IdSketch().add_all(before).departed(IdSketch().add_all(now))

    assert named is not None
    assert set(named) == left
    assert len(named) == len(left)


def test_given_no_change_when_compared_then_nothing_is_named() -> None:
    same = ids("cus", 5_000)

    assert IdSketch().add_all(same).departed(IdSketch().add_all(reversed(same))) == []


def test_given_ids_listed_twice_by_a_resumed_read_when_compared_then_they_are_still_named() -> None:
    before = ids("sub", 1_000)
    twice = IdSketch().add_all(before).add_all(before[:50])  # a resumed backfill listed 50 again

    named = twice.departed(IdSketch().add_all(before[25:]))

    assert named is not None
    assert set(named) == set(before[:50]), "those that left, and those counted twice (fetched: harmless)"


def test_given_more_departures_than_the_sketch_holds_when_compared_then_it_says_it_cannot_tell() -> None:
    before = ids("in", 10_000)

    assert IdSketch().add_all(before).departed(IdSketch().add_all(before[2_000:])) is None


def test_given_sketch_when_kept_in_state_then_it_reads_back_the_same_and_stays_small() -> None:
    before = ids("cus", 50_000)
    blob = json.loads(json.dumps(IdSketch().add_all(before).to_state()))

    restored = IdSketch.from_state(blob)

    assert restored is not None
    assert restored.departed(IdSketch().add_all(before[1:])) == [before[0]]
    assert len(json.dumps(blob)) < 20_000, "the state does not grow with the account"


def test_given_state_without_a_valid_sketch_when_read_then_none() -> None:
    valid = IdSketch().add_all(ids("cus", 10)).to_state()

    assert IdSketch.from_state(None) is None
    assert IdSketch.from_state({"cells": 3}) is None
    assert IdSketch.from_state(valid | {"keys": {"width": 1, "data": "not base64!"}}) is None
    assert IdSketch.from_state(valid | {"keys": "not packed"}) is None
    assert IdSketch.from_state(valid | {"counts": [1, 2]}) is None
