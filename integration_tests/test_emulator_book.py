"""The seeded book really holds each scenario (counted against the objects), is deterministic, and a
clock advance produces the matching objects and events."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest

from integration_tests.stripe_emulator import DEFAULT_NOW, Emulator

pytestmark = pytest.mark.emulator

DAY = 86_400
REQUIRED = [
    "trial_converting",
    "trial_no_payment_method",
    "dunning_recovered",
    "dunning_unpaid",
    "dunning_canceled",
    "dunning_active",
    "past_due_aging",
    "send_invoice_past_due",
    "uncollectible",
    "void",
    "downgraded",
    "upgraded",
    "seat_change",
    "interval_switch",
    "cancel_at_period_end",
    "canceled_immediately",
    "coupon_forever",
    "item_coupon_forever",
    "coupon_once",
    "coupon_repeating",
    "jpy",
    "eur",
    "usd",
    "tiered",
    "metered",
    "hard_decline",
    "many_items",
    "deleted_customer",
]


class View:
    """The book as the API shows it, grouped by customer."""

    def __init__(self, emu: Emulator) -> None:
        self.customers = {c["id"]: c for c in emu.objects("customers")}
        self.subs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for sub in emu.objects("subscriptions", variant="discounts,items.data.discounts"):
            self.subs[sub["customer"]].append(sub)
        self.invoices: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for invoice in emu.objects("invoices"):
            self.invoices[invoice["customer"]].append(invoice)
        self.charges: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for charge in emu.objects("charges"):
            self.charges[charge["customer"]].append(charge)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in emu.objects("events"):
            obj = event["data"]["object"]
            self.events[obj.get("customer") or obj["id"]].append(event)
        self.coupons = {c["id"]: c for c in emu.objects("coupons")}
        self.prices = {p["id"]: p for p in emu.objects("prices")}


@pytest.fixture(scope="module")
def view(emulator: Emulator) -> View:
    return View(emulator)


@pytest.fixture(scope="module")
def labels(emulator: Emulator) -> dict[str, set[str]]:
    return emulator.scenarios()


def having(labels: dict[str, set[str]], label: str) -> list[str]:
    return sorted(cid for cid, names in labels.items() if label in names)


def test_given_the_default_test_book_then_every_scenario_is_present(labels: dict[str, set[str]]) -> None:
    counts = Counter(name for names in labels.values() for name in names)
    missing = [name for name in REQUIRED if counts[name] == 0]
    assert not missing, f"scenarios missing from the book: {missing}; counts {dict(counts)}"


def test_given_trials_then_payment_methods_and_outcomes_match(
    view: View, labels: dict[str, set[str]]
) -> None:
    for cid in having(labels, "trial_no_payment_method"):
        assert (
            view.customers.get(cid, {"invoice_settings": {"default_payment_method": None}})[
                "invoice_settings"
            ]["default_payment_method"]
            is None
        )
        statuses = {s["status"] for s in view.subs[cid]}
        assert statuses <= {"trialing", "canceled"}
    for cid in having(labels, "trial_converting"):
        assert view.customers[cid]["invoice_settings"]["default_payment_method"]
        sub = view.subs[cid][0]
        assert sub["trial_end"]
        assert sub["trial_start"]
        assert sub["status"] != "trialing"
        billed = [i for i in view.invoices[cid] if i["subtotal"] > 0 and i["created"] >= sub["trial_end"]]
        assert billed  # the first real invoice came when the trial ended
    trialing_without_pm = [
        cid for cid in having(labels, "trial_no_payment_method") if "trialing" in labels[cid]
    ]
    assert trialing_without_pm  # flag_trial_expiring has something to find


def test_given_dunning_then_failed_charges_and_outcomes_match(
    view: View, labels: dict[str, set[str]]
) -> None:
    for cid in having(labels, "dunning_recovered"):
        statuses = [c["status"] for c in reversed(view.charges[cid])]  # oldest first
        first_failure = statuses.index("failed")
        assert "succeeded" in statuses[first_failure:]
    for cid in having(labels, "dunning_unpaid"):
        assert any(s["status"] == "unpaid" for s in view.subs[cid]) or cid not in view.customers
    for cid in having(labels, "dunning_canceled"):
        canceled = [s for s in view.subs[cid] if s["status"] == "canceled"]
        assert any(s["cancellation_details"]["reason"] == "payment_failed" for s in canceled)
    for cid in having(labels, "dunning_active"):
        assert any(s["status"] == "past_due" for s in view.subs[cid])
        assert any(i["status"] == "open" and i["attempt_count"] >= 1 for i in view.invoices[cid])
        assert view.customers[cid]["delinquent"] is True
    for cid in having(labels, "hard_decline"):
        failed = [c for c in view.charges[cid] if c["status"] == "failed"]
        assert any(c["outcome"]["advice_code"] == "do_not_try_again" for c in failed)
        assert all(c["failure_code"] in ("card_declined", "expired_card") for c in failed)


def test_given_send_invoice_scenarios_then_invoices_match(
    emulator: Emulator, view: View, labels: dict[str, set[str]]
) -> None:
    now = emulator.now
    for cid in having(labels, "send_invoice_past_due"):
        overdue = [i for i in view.invoices[cid] if i["status"] == "open" and i["due_date"] < now]
        assert overdue
        assert all(i["collection_method"] == "send_invoice" for i in overdue)
    for cid in having(labels, "past_due_aging"):
        assert any(i["status"] == "open" and now - i["due_date"] > 30 * DAY for i in view.invoices[cid])
    for cid in having(labels, "uncollectible"):
        assert any(i["status"] == "uncollectible" for i in view.invoices[cid])
    for cid in having(labels, "void"):
        assert any(i["status"] == "void" and i["amount_due"] == 0 for i in view.invoices[cid])
    ages = {
        (now - i["due_date"]) // (30 * DAY)
        for cid in having(labels, "send_invoice_past_due")
        for i in view.invoices[cid]
        if i["status"] == "open" and i["due_date"] < now
    }
    assert len(ages) >= 2  # past due by different ages: under 30 days and older


def test_given_plan_changes_then_update_events_carry_previous_attributes(
    view: View, labels: dict[str, set[str]]
) -> None:
    for label in ("upgraded", "downgraded", "seat_change", "interval_switch"):
        recent = [
            e
            for cid in having(labels, label)
            for e in view.events[cid]
            if e["type"] == "customer.subscription.updated"
            and "items" in e["data"]["previous_attributes"]
            and e["request"]["id"]
        ]
        assert recent, label
    for cid in having(labels, "cancel_at_period_end"):
        assert any(s["cancel_at_period_end"] or s["status"] == "canceled" for s in view.subs[cid])
    for cid in having(labels, "canceled_immediately"):
        assert any(s["status"] == "canceled" and s["ended_at"] == s["canceled_at"] for s in view.subs[cid])


def test_given_plan_and_seat_changes_then_the_rest_of_the_period_is_invoiced_at_once_with_prorations(
    view: View, labels: dict[str, set[str]]
) -> None:
    changed = {label: set(having(labels, label)) for label in ("upgraded", "downgraded", "seat_change")}
    prorated = [
        (cid, i)
        for cid in set().union(*changed.values())
        for i in view.invoices[cid]
        if any(is_proration(line) for line in i["lines"]["data"])
    ]
    assert any(i["total"] > 0 for _, i in prorated), "an upgrade is charged"
    assert any(i["total"] < 0 for _, i in prorated), "a downgrade is credited"
    for cid, invoice in prorated:
        credit, charge = invoice["lines"]["data"]
        assert invoice["billing_reason"] == "subscription_update"
        assert all(is_proration(line) for line in (credit, charge))
        assert credit["amount"] < 0 < charge["amount"], "unused time credited, remaining time charged"
        assert credit["period"] == charge["period"]  # from the change to the end of the period
        assert credit["period"]["start"] == invoice["created"]
        assert invoice["subtotal"] == credit["amount"] + charge["amount"]
        # Customer credit is used before anything is charged; a credit total adds to it.
        assert invoice["amount_due"] == max(0, invoice["total"] + invoice["starting_balance"])
        assert invoice["ending_balance"] == min(0, invoice["total"] + invoice["starting_balance"])
        if invoice["status"] == "paid" and invoice["amount_paid"]:
            assert any(c["amount"] == invoice["amount_paid"] for c in view.charges[cid])
    credited = {cid for cid, i in prorated if i["total"] < 0}
    later = [
        i for cid in credited for i in view.invoices[cid] if i["starting_balance"] < 0 and i["total"] > 0
    ]
    assert later, "a later invoice uses the credit"
    assert all(i["amount_due"] < i["total"] for i in later)


def is_proration(line: dict[str, Any]) -> bool:
    return bool(line["parent"]["subscription_item_details"]["proration"])


def test_given_an_item_coupon_then_its_line_loses_it_before_the_subscription_discount(
    view: View, labels: dict[str, set[str]]
) -> None:
    customers = having(labels, "item_coupon_forever")
    assert customers
    for cid in customers:
        (sub,) = view.subs[cid]
        item_discount = sub["items"]["data"][0]["discounts"][0]
        assert item_discount["subscription_item"] == sub["items"]["data"][0]["id"]
        assert view.coupons[item_discount["source"]["coupon"]]["duration"] == "forever"
        (sub_discount,) = sub["discounts"]
        renewals = [i for i in view.invoices[cid] if i["billing_reason"] == "subscription_cycle"]
        assert renewals, "renewed at least once"
        for invoice in renewals:
            line = invoice["lines"]["data"][0]
            (item_off,) = line["discount_amounts"]
            assert item_off["discount"] == item_discount["id"]
            # the subscription's 20% applies to what is left after the item's $10
            taken = {d["discount"]: d["amount"] for d in invoice["total_discount_amounts"]}
            assert taken[sub_discount["id"]] == ((invoice["subtotal"] - item_off["amount"]) * 20 + 50) // 100
            assert invoice["total"] == invoice["subtotal"] - item_off["amount"] - taken[sub_discount["id"]]


def test_given_coupons_currencies_and_prices_then_objects_match(
    view: View, labels: dict[str, set[str]]
) -> None:
    for duration in ("forever", "once", "repeating"):
        customers = having(labels, f"coupon_{duration}")
        assert customers
        discounted = [
            i
            for cid in customers
            for i in view.invoices[cid]
            if any(d["amount"] for d in i["total_discount_amounts"]) and i["subtotal"]
        ]
        assert discounted
        # A discount lowers a charge, and the credit for unused discounted time alike.
        assert all(abs(i["total"]) < abs(i["subtotal"]) for i in discounted)
    for cid in having(labels, "coupon_forever"):
        for sub in view.subs[cid]:
            assert all(view.coupons[d["source"]["coupon"]]["duration"] == "forever" for d in sub["discounts"])
    for currency in ("jpy", "eur"):
        for cid in having(labels, currency):
            assert {i["currency"] for i in view.invoices[cid]} == {currency}
    # Yen are whole units: a full period costs thousands (a proration for a few days may not).
    jpy_amounts = [
        i["total"]
        for cid in having(labels, "jpy")
        for i in view.invoices[cid]
        if i["total"] and not any(is_proration(line) for line in i["lines"]["data"])
    ]
    assert jpy_amounts
    assert min(jpy_amounts) >= 1000
    for cid in having(labels, "tiered"):
        prices = [item["price"] for s in view.subs[cid] for item in s["items"]["data"]]
        assert any(p["billing_scheme"] == "tiered" for p in prices)
    for cid in having(labels, "metered"):
        prices = [item["price"] for s in view.subs[cid] for item in s["items"]["data"]]
        assert any(p["recurring"]["usage_type"] == "metered" for p in prices) or any(
            s["status"] == "canceled" or s["items"]["data"][0]["price"]["recurring"]["interval"] == "year"
            for s in view.subs[cid]
        )


def test_given_events_then_snapshots_are_as_of_their_moment(view: View) -> None:
    created = [e for evs in view.events.values() for e in evs if e["type"] == "invoice.created"]
    assert created
    assert all(e["data"]["object"]["status"] == "draft" for e in created)
    paid = [e for evs in view.events.values() for e in evs if e["type"] == "invoice.paid"]
    assert paid
    assert all(e["data"]["object"]["status"] == "paid" for e in paid)


def test_given_the_same_seed_then_the_same_book_and_another_seed_another(emulator: Emulator) -> None:
    again = Emulator(customers=300, seed=42)
    assert again.objects("invoices") == emulator.objects("invoices")
    assert again.objects("events") == emulator.objects("events")
    assert again.scenarios() == emulator.scenarios()
    other = Emulator(customers=300, seed=43)
    assert [c["id"] for c in other.objects("customers")] != [c["id"] for c in emulator.objects("customers")]


def test_given_the_default_book_then_two_years_of_history_before_now(emulator: Emulator) -> None:
    assert emulator.now == DEFAULT_NOW
    created = [c["created"] for c in emulator.objects("customers")]
    assert min(created) >= DEFAULT_NOW - 731 * DAY
    assert max(created) < DEFAULT_NOW
    assert min(created) < DEFAULT_NOW - 600 * DAY


def test_given_a_clock_advance_then_matching_objects_and_events_appear(emulator_factory: Any) -> None:
    emu: Emulator = emulator_factory(customers=200, seed=11)
    before_now = emu.now
    before_customers = {c["id"] for c in emu.objects("customers")}
    summary = emu.advance(days=5)
    assert emu.now == before_now + 5 * DAY == summary["to"]

    new_events = [e for e in emu.objects("events") if e["created"] > before_now]
    assert Counter(e["type"] for e in new_events) == Counter(summary["events"])
    assert {e["id"] for e in new_events} == set(summary["event_ids"])
    assert summary["changes"]["renewal"] > 0
    assert summary["events"]["invoice.created"] > 0

    invoices = {i["id"]: i for i in emu.objects("invoices")}
    assert summary["touched"]["invoices"]
    assert set(summary["touched"]["invoices"]) <= set(invoices)
    for event in new_events:
        if event["type"] == "invoice.created":
            assert event["data"]["object"]["id"] in invoices
            assert before_now < invoices[event["data"]["object"]["id"]]["created"] <= emu.now
    new_customers = {c["id"] for c in emu.objects("customers")} - before_customers
    assert len(new_customers) == summary["changes"]["signup"] == summary["events"]["customer.created"]
    assert all(e["created"] >= emu.now - 30 * DAY for e in emu.objects("events"))


def test_given_a_long_advance_then_events_older_than_30_days_are_gone(emulator_factory: Any) -> None:
    emu: Emulator = emulator_factory(customers=60, seed=3)
    old_ids = {e["id"] for e in emu.objects("events")}
    emu.advance(days=31)
    remaining = emu.objects("events")
    assert not old_ids & {e["id"] for e in remaining}
    assert remaining
    assert min(e["created"] for e in remaining) >= emu.now - 30 * DAY


def test_given_the_same_seed_and_advances_then_the_same_changes(emulator_factory: Any) -> None:
    first: Emulator = emulator_factory(customers=80, seed=21)
    second: Emulator = emulator_factory(customers=80, seed=21)
    assert first.advance(days=4) == second.advance(days=4)
    assert first.objects("events") == second.objects("events")
    assert first.objects("subscriptions") == second.objects("subscriptions")


def test_given_another_now_then_the_history_ends_there() -> None:
    emu = Emulator(customers=40, seed=2, now="2026-06-01T00:00:00Z")
    june = 1_780_272_000
    assert emu.now == june
    for resource in ("customers", "invoices", "charges", "events"):
        created = [o["created"] for o in emu.objects(resource)]
        assert created
        assert max(created) <= june
    assert min(e["created"] for e in emu.objects("events")) >= june - 30 * DAY


def test_given_billing_shapes_the_health_contract_needs_then_each_is_in_the_book(
    emulator: Emulator, view: View, labels: dict[str, set[str]]
) -> None:
    for label in (
        "customer_discount",
        "pause_collection_void",
        "pause_collection_keep_as_draft",
        "paused",
        "tax_inclusive",
        "weekly",
        "quarterly",
    ):
        assert having(labels, label), label

    for cid in having(labels, "customer_discount"):
        discount = view.customers[cid]["discount"]
        assert view.coupons[discount["source"]["coupon"]]["duration"] == "forever"
        assert discount["customer"] == cid
        assert discount["subscription"] is None
        assert all(s["discounts"] == [] for s in view.subs[cid])
        assert any(
            i["discounts"] == [discount["id"]] and i["total"] < i["subtotal"] for i in view.invoices[cid]
        )

    for behavior in ("void", "keep_as_draft"):
        for cid in having(labels, f"pause_collection_{behavior}"):
            (sub,) = view.subs[cid]
            assert sub["status"] == "active"
            assert sub["pause_collection"] == {"behavior": behavior, "resumes_at": None}
            latest = next(i for i in view.invoices[cid] if i["id"] == sub["latest_invoice"])
            assert latest["status"] == ("void" if behavior == "void" else "draft")
            assert latest["amount_paid"] == 0

    for cid in having(labels, "paused"):
        (sub,) = view.subs[cid]
        assert sub["status"] == "paused"
        assert sub["trial_settings"]["end_behavior"]["missing_payment_method"] == "pause"
        assert sub["trial_end"] <= emulator.now
        assert view.customers[cid]["invoice_settings"]["default_payment_method"] is None

    for cid in having(labels, "tax_inclusive"):
        (sub,) = view.subs[cid]
        (rate,) = sub["default_tax_rates"]
        assert rate["object"] == "tax_rate"
        assert rate["inclusive"] is True
        assert rate["percentage"] == 20
        assert sub["items"]["data"][0]["price"]["tax_behavior"] == "inclusive"
        billed = [i for i in view.invoices[cid] if i["total"]]
        assert billed
        for invoice in billed:
            (tax,) = invoice["total_taxes"]
            assert tax["tax_behavior"] == "inclusive"
            # 20% included: the net is the total / 1.2, half-up, and the parts add up to the total
            assert tax["taxable_amount"] == (invoice["total"] * 10 + 6) // 12
            assert tax["taxable_amount"] + tax["amount"] == invoice["total"] == invoice["subtotal"]
            assert invoice["total_excluding_tax"] == tax["taxable_amount"]

    for label, interval, count, days in (
        ("weekly", "week", 1, {7}),
        ("quarterly", "month", 3, {89, 90, 91, 92}),
    ):
        for cid in having(labels, label):
            (sub,) = view.subs[cid]
            item = sub["items"]["data"][0]
            assert item["price"]["recurring"]["interval"] == interval
            assert item["price"]["recurring"]["interval_count"] == count
            assert (item["current_period_end"] - item["current_period_start"]) // DAY in days
            cycles = sorted(i["created"] for i in view.invoices[cid])
            assert {(b - a) // DAY for a, b in zip(cycles, cycles[1:], strict=False)} <= days
