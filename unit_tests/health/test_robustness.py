"""Malformed or partial Stripe objects never crash the engine; output never depends on input order."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from destination_perly.health.values import to_time
from unit_tests.health.builders import (
    bundle,
    charge,
    coupon,
    customer,
    days_ago,
    discount,
    evaluate,
    event,
    invoice,
    item,
    paid_invoice,
    price,
    subscription,
    tier,
    tiered_price,
)

# Any JSON value, including the wrong type for a field.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def realistic() -> dict[str, list[dict[str, Any]]]:
    return {
        "subscriptions": [
            subscription(
                item(price(amount=1000)),
                item(tiered_price("volume", [tier(5, 100), tier(None, 50)]), 7),
                discounts=[discount("co_1")],
            ),
            subscription(sub_id="sub_2", status="trialing", trial_end=days_ago(-2)),
        ],
        "invoices": [
            invoice(due_date=days_ago(12)),
            paid_invoice("in_2", days_ago(60), days_ago(30), "price_basic", 1000),
        ],
        "charges": [charge(), charge("ch_2", reason="stolen_card")],
        "events": [
            event(
                "evt_1", days_ago(5), subscription(), previous={"items": {"data": [item(price(amount=500))]}}
            )
        ],
    }


FIELDS = {
    "subscriptions": [
        "status",
        "items",
        "discounts",
        "ended_at",
        "trial_end",
        "start_date",
        "currency",
        "pause_collection",
        "cancellation_details",
        "default_tax_rates",
        "cancel_at",
    ],
    "invoices": [
        "status",
        "amount_remaining",
        "due_date",
        "status_transitions",
        "lines",
        "parent",
        "next_payment_attempt",
        "currency",
    ],
    "charges": ["status", "created", "outcome"],
    "events": ["type", "created", "data"],
}


@settings(max_examples=150, deadline=None)
@given(
    stream=st.sampled_from(sorted(FIELDS)),
    index=st.integers(min_value=0, max_value=1),
    field_pick=st.integers(min_value=0, max_value=20),
    value=json_values,
)
def test_given_any_field_replaced_by_any_json_when_evaluating_then_nothing_crashes(
    stream: str, index: int, field_pick: int, value: Any
) -> None:
    objects = realistic()
    target = objects[stream][index % len(objects[stream])]
    names = FIELDS[stream]
    target[names[field_pick % len(names)]] = value
    health = evaluate(bundle(coupons=[coupon(percent_off=10)], **objects)).health
    assert health.mrr >= 0
    assert 0 <= health.risk_score <= 100


def all_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a JSON value."""
    found: list[tuple[Any, ...]] = []
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    )
    for key, child in children:
        found.append((*prefix, key))
        found.extend(all_paths(child, (*prefix, key)))
    return found


@settings(max_examples=200, deadline=None)
@given(pick=st.integers(min_value=0, max_value=10**6), value=json_values)
@example(pick=364, value="²")  # a subscription's `start_date`: "²".isdigit(), yet int("²") fails
def test_given_any_nested_field_replaced_by_any_json_when_evaluating_then_nothing_crashes(
    pick: int, value: Any
) -> None:
    objects = realistic()
    paths = [path for path in all_paths(objects) if len(path) >= 3]  # inside an object
    path = paths[pick % len(paths)]
    holder: Any = objects
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    health = evaluate(bundle(coupons=[coupon(percent_off=10)], **objects)).health
    assert health.mrr >= 0


@settings(max_examples=60, deadline=None)
@given(value=json_values)
def test_given_garbage_item_or_price_when_evaluating_then_nothing_crashes(value: Any) -> None:
    garbage_item = item(price(amount=1000))
    garbage_item["price"] = value if not isinstance(value, dict) else {**price(), "recurring": value}
    evaluate(bundle([subscription(garbage_item, item(price("p2", amount=500)))]))


def test_given_non_dict_objects_in_lists_when_evaluating_then_they_are_skipped() -> None:
    found = bundle([subscription(), "sub_x", None], ["in_x", 3], [[]], ["evt"])  # type: ignore[list-item]
    evaluation = evaluate(found)
    assert evaluation.health.mrr == 1000
    assert "subscriptions: 2 malformed entries skipped" in evaluation.problems


def test_given_no_customer_object_when_evaluating_then_fields_are_empty_but_mrr_computed() -> None:
    found = bundle([subscription()])
    found.customer = None
    health = evaluate(found).health
    assert (health.email, health.tenure_days, health.mrr) == (None, None, 1000)


def test_given_shuffled_inputs_when_evaluating_then_output_is_identical() -> None:
    objects = realistic()
    first = evaluate(bundle(coupons=[coupon(percent_off=10)], the_customer=customer(), **objects))
    shuffled = {name: random.Random(7).sample(found, len(found)) for name, found in objects.items()}
    second = evaluate(bundle(coupons=[coupon(percent_off=10)], the_customer=customer(), **shuffled))
    assert first == second


def test_given_discount_as_bare_id_in_an_event_when_building_history_then_it_is_resolved() -> None:
    # the current subscription has the expanded 50%-forever discount; the event payload carries only its id.
    # The MRR before the event was 2 seats x 1000 x 50% = 1000; now 4 seats -> 2000: one expansion, no
    # spurious jump from a "missing" discount.
    now = subscription(item(price(amount=1000), 4), discounts=[discount("co_half", start=days_ago(300))])
    payload = {**now, "discounts": ["di_co_half"]}
    found = bundle(
        [now],
        events=[
            event("evt_1", days_ago(5), payload, previous={"items": {"data": [item(price(amount=1000), 2)]}})
        ],
        coupons=[coupon("co_half", percent_off=50)],
    )
    evaluation = evaluate(found)
    assert [(m.kind, m.mrr_before, m.mrr_after) for m in evaluation.movements][-1] == (
        "expansion",
        1000,
        2000,
    )


def test_given_digit_like_text_that_is_not_a_number_then_it_is_no_time() -> None:
    assert to_time("²") is None
    assert to_time(" 1700000000") == to_time(1700000000)
