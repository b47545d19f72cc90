"""Incremental syncs with a key that cannot read events: only what can still change is read, and what
left those lists since the last sync (paid, canceled, deleted) is still caught."""

from __future__ import annotations

from typing import Any

from source_perly_stripe.windows import DAY

from .builders import DEFAULT_NOW, TEST_RESTRICTED_KEY, ConfigBuilder
from .fake_stripe import FakeStripe
from .test_read import final_states, query_of, records, state_blob, sync

NOW = DEFAULT_NOW
BILLING = ("customers", "subscriptions", "invoices", "charges")


def restricted() -> dict[str, Any]:
    return ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()


def account(fake: FakeStripe) -> dict[str, dict[str, Any]]:
    """Two years of a small business: most invoices paid and charges old, a few open."""
    customers = [
        fake.add("customers", NOW - 700 * DAY + i * 3_000, email=f"c{i}@example.com") for i in range(300)
    ]
    for i, customer in enumerate(customers):
        status = "canceled" if i % 5 == 0 else "active"
        fake.add("subscriptions", customer["created"] + 10, customer=customer["id"], status=status)
        for month in range(6):
            at = customer["created"] + 20 + month * 30 * DAY
            fake.add("invoices", at, customer=customer["id"], status="paid")
            fake.add("charges", at + 1, customer=customer["id"], status="succeeded")
    return {
        "open": fake.add("invoices", NOW - 40 * DAY, customer=customers[1]["id"], status="open"),
        "draft": fake.add("invoices", NOW - 2 * DAY, customer=customers[2]["id"], status="draft"),
        "active": next(s for s in fake.objects["subscriptions"].values() if s["status"] == "active"),
        "gone": customers[3],
    }


def test_given_changes_since_the_last_sync_when_incremental_without_events_then_each_is_caught() -> None:
    fake = FakeStripe()
    known = account(fake)
    first = sync(fake, *BILLING, config=restricted())
    first_requests = len(fake.requests)
    # A day passes: an open invoice is paid, a draft deleted, a subscription canceled, a customer
    # deleted, and a new customer signs up.
    fake.now = NOW + DAY
    known["open"]["status"] = "paid"
    fake.delete("invoices", known["draft"]["id"])
    known["active"]["status"] = "canceled"
    fake.delete("customers", known["gone"]["id"])
    newcomer = fake.add("customers", NOW + 3_600, email="new@example.com")
    fake.requests.clear()

    second = sync(fake, *BILLING, state=final_states(first), config=restricted())

    invoices = {r["id"]: r for r in records(second, "invoices")}
    assert invoices[known["open"]["id"]]["status"] == "paid"
    assert invoices[known["draft"]["id"]].get("deleted") is True
    subscriptions = {r["id"]: r for r in records(second, "subscriptions")}
    assert subscriptions[known["active"]["id"]]["status"] == "canceled"
    customers = {r["id"]: r for r in records(second, "customers")}
    assert customers[known["gone"]["id"]].get("deleted") is True
    assert newcomer["id"] in customers
    # The paid invoices and old charges were not read again; only the lists of what can change.
    assert len(invoices) < 10
    assert len(records(second, "charges")) == 0
    invoice_lists = [q for r in fake.requests if r.path == "/v1/invoices" for q in [query_of(r)]]
    old_lists = [q for q in invoice_lists if int(q["created[gte]"][0]) < NOW - DAY]
    assert old_lists
    assert {q["status"][0] for q in old_lists} == {"draft", "open", "uncollectible"}
    assert len(fake.requests) < first_requests
    assert "watch" in state_blob(second, "invoices")


def test_given_charges_when_incremental_without_events_then_recent_ones_are_read_again() -> None:
    fake = FakeStripe()
    recent = fake.add("charges", NOW - 5 * DAY, status="pending")
    old = fake.add("charges", NOW - 90 * DAY, status="succeeded")
    first = sync(fake, "charges", config=restricted())
    fake.now = NOW + DAY
    recent["status"] = "succeeded"

    second = sync(fake, "charges", state=final_states(first), config=restricted())

    assert [r["id"] for r in records(second, "charges")] == [recent["id"]]
    assert records(second, "charges")[0]["status"] == "succeeded"
    assert old["id"] not in {r["id"] for r in records(second, "charges")}


def test_given_too_many_departures_to_name_when_incremental_then_the_stream_is_read_in_full_once() -> None:
    fake = FakeStripe()
    opened = [fake.add("invoices", NOW - 100 * DAY + i * 600, status="open") for i in range(600)]
    first = sync(fake, "invoices", config=restricted())
    fake.now = NOW + DAY
    for invoice in opened:
        invoice["status"] = "paid"

    second = sync(fake, "invoices", state=final_states(first), config=restricted())

    assert {r["id"]: r["status"] for r in records(second, "invoices")} == {i["id"]: "paid" for i in opened}
    assert second.is_in_logs("read in full this once")


def test_given_a_reconciliation_when_the_next_one_starts_then_it_estimates_as_many_records() -> None:
    fake = FakeStripe()
    for i in range(30):
        fake.add("charges", NOW - 10 * DAY + i * 60, status="succeeded")
    first = sync(fake, "charges", config=restricted())
    second = sync(fake, "charges", state=final_states(first), config=restricted())

    third = sync(fake, "charges", state=final_states(second), config=restricted())

    estimates = [m.trace.estimate for m in third.trace_messages if m.trace.estimate is not None]
    assert [(e.name, e.row_estimate) for e in estimates] == [("charges", len(records(second, "charges")))]
    assert len(records(second, "charges")) == 30
