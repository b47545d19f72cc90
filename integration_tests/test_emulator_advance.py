"""advance() never rewrites history: every change lands inside the advanced interval and comes with
the events Stripe would send for it."""

from __future__ import annotations

from typing import Any

import pytest

from integration_tests.stripe_emulator import Emulator

pytestmark = pytest.mark.emulator

DAY = 86_400
WATCHED = ("customers", "subscriptions", "invoices", "charges")
# Per resource: the timestamp fields that record a moment in the object's past.
MOMENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "invoices": (
        ("status_transitions", "finalized_at"),
        ("status_transitions", "paid_at"),
        ("status_transitions", "marked_uncollectible_at"),
        ("status_transitions", "voided_at"),
        ("created",),
        ("effective_at",),
    ),
    "subscriptions": (("canceled_at",), ("ended_at",), ("created",), ("billing_cycle_anchor",)),
    "customers": (("created",),),
    "charges": (("created",),),
}


def snapshot(emu: Emulator) -> dict[str, dict[str, dict[str, Any]]]:
    return {resource: {obj["id"]: obj for obj in emu.objects(resource)} for resource in WATCHED}


def moment(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = obj
    for key in path:
        value = value[key]
    return value


def counter_only(then: dict[str, Any], now: dict[str, Any]) -> bool:
    """Only customer.next_invoice_sequence moved (we emit no customer.updated for numbering)."""
    differing = {key for key in now if then.get(key) != now[key]}
    return differing == {"next_invoice_sequence"}


def check_advance(emu: Emulator, days: float) -> int:
    """Advance and check the invariant; returns how many objects changed."""
    old_now = emu.now
    before = snapshot(emu)
    summary = emu.advance(days=days)
    after = snapshot(emu)
    events = [e for e in emu.objects("events") if e["created"] > old_now]
    assert {e["id"] for e in events} == set(summary["event_ids"])
    assert all(e["created"] <= emu.now for e in events)
    announced = {(e["data"]["object"]["object"], e["data"]["object"]["id"]) for e in events}
    invoiced = {e["data"]["object"]["customer"] for e in events if e["type"] == "invoice.finalized"}

    changed = 0
    for resource in WATCHED:
        for obj_id, now_obj in after[resource].items():
            then = before[resource].get(obj_id)
            if then == now_obj:
                continue
            changed += 1
            kind = now_obj["object"]
            if then is not None and counter_only(then, now_obj):
                # Invoice numbering moves the customer's counter; the invoice events announce it.
                assert obj_id in invoiced, f"{obj_id} numbered an invoice with no invoice event"
                continue
            assert (kind, obj_id) in announced, f"{kind} {obj_id} changed with no event"
            if then is None:
                assert old_now < now_obj["created"] <= emu.now
                continue
            for path in MOMENTS[resource]:
                old_value, new_value = moment(then, path), moment(now_obj, path)
                if new_value != old_value and new_value is not None:
                    assert old_now < new_value <= emu.now, f"{kind} {obj_id} {path} set to {new_value}"
        gone = set(before[resource]) - set(after[resource])
        for obj_id in gone:  # deleted customers
            assert (before[resource][obj_id]["object"], obj_id) in announced
    return changed


@pytest.mark.parametrize("seed", [7, 11, 23])
def test_given_advances_then_every_change_is_inside_them_and_announced(
    emulator_factory: Any, seed: int
) -> None:
    emu: Emulator = emulator_factory(customers=80, seed=seed)
    assert check_advance(emu, 30) > 50  # the month really moved the book on
    assert check_advance(emu, 2.5) > 0  # and a second, shorter one keeps to the rule too


@pytest.mark.parametrize("seed", [6, 7, 20, 23, 28])
def test_given_a_built_book_then_nothing_is_left_scheduled_in_the_past(seed: int) -> None:
    # Seeds whose books once held stale actions (an interval switch or a cancellation left copies
    # of the agenda behind, which the next advance ran at their old times).
    emu = Emulator(customers=80, seed=seed)
    book = emu.book
    stale = [
        (sub.id, entry[2], entry[0])
        for subs in book.subscriptions_of.values()
        for sub in subs
        for entry in sub.sim.agenda
        if entry[0] <= book.now
    ]
    assert stale == []
