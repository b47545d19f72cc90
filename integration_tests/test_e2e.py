"""End to end: the real connectors, piped as `make demo` pipes them, against the Stripe emulator.

A full sync, then the emulator's clock moves on and an incremental sync runs from the state the
destination acknowledged. After each, the store is checked against what the emulator holds, using
sums and rules computed here, straight from the emulator's objects (not the destination's code):
every customer present, each flag raised for exactly the customers the seeded scenarios call for,
MRR per customer and currency, the changes of the clock advance. Then a sync killed part-way and run
again must end in the same store as the uninterrupted one.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Any

import pytest

from integration_tests.demo import LADDER, emulator_source_config, iso, plan_tiers
from integration_tests.stripe_emulator import Emulator
from perly_runner.pipeline import SyncFailed, configured_catalog, discover, run_sync, write_json

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

CUSTOMERS, SEED, ADVANCE_DAYS = 120, 42, 10  # every forced scenario appears twice from 52 customers up
DAY = 86_400


# ---------------------------------------------------------------------------------------------------
# What the store should hold, computed independently from the emulator


def unix(text: str) -> int:
    """A stored time (ISO-8601 UTC) as Unix seconds."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def days_past_due(invoice: dict[str, Any], now: int) -> int | None:
    """Whole days an open invoice with money left is past its due date (or finalization)."""
    if invoice["status"] != "open" or invoice["amount_remaining"] <= 0:
        return None
    reference = invoice.get("due_date") or (invoice.get("status_transitions") or {}).get("finalized_at")
    return None if reference is None else (now - reference) // DAY


def visible(objects: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    """Objects that exist at `now`. (The emulator can hold an object stamped a little after its own
    now, e.g. a charge retried within the hour; Stripe never serves such an object, nor should we.)"""
    return [obj for obj in objects if obj.get("created", 0) <= now]


def invoice_subscription(invoice: dict[str, Any]) -> str | None:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return details.get("subscription")


MONTHS_PER_INTERVAL = {
    "day": Fraction(12, 365),
    "week": Fraction(12, 52),
    "month": Fraction(1),
    "year": Fraction(12),
}


def expected_mrr(emulator: Emulator) -> dict[str, dict[str, int]]:
    """PERLY_CONTRACT section 3 over the emulator's own book (its prices compute their tiers)."""
    now = emulator.now
    oldest_past_due: dict[str, int] = {}
    for invoice in emulator.objects("invoices"):
        days, sub_id = days_past_due(invoice, now), invoice_subscription(invoice)
        if days is not None and sub_id:
            oldest_past_due[sub_id] = max(days, oldest_past_due.get(sub_id, days))

    def active(discount: Any) -> bool:
        return (
            discount.coupon.duration == "forever"
            and discount.start <= now
            and (discount.end is None or discount.end > now)
        )

    mrr: dict[str, dict[str, int]] = defaultdict(dict)
    for sub in emulator.book.stores["subscriptions"].live():
        if sub.status not in ("active", "past_due") or sub.ended_at or sub.pause_collection:
            continue
        if sub.status == "past_due" and oldest_past_due.get(sub.id, 0) > 30:
            continue  # delinquent churn
        inclusive = sum(rate.percentage for rate in sub.tax_rates if rate.inclusive)
        monthly, months = Fraction(0), Fraction(1)
        for item in sub.items:
            price = item.price
            if price.usage_type != "licensed":
                continue
            months = price.interval_count * MONTHS_PER_INTERVAL[price.interval]
            amount = Fraction(price.amount_for(item.quantity))
            for discount in filter(active, item.discounts):  # an item's own discounts come first
                coupon = discount.coupon
                if coupon.percent_off is not None:
                    amount *= 1 - Fraction(str(coupon.percent_off)) / 100
                elif coupon.amount_off:
                    amount = max(amount - coupon.amount_off, Fraction(0))
            if price.tax_behavior == "inclusive":
                amount = amount * 100 / (100 + inclusive)  # the tax inside the price is not revenue
            monthly += amount / months
        # A customer-level discount applies only where the subscription has none of its own.
        discounts = sub.discounts or ([sub.customer.discount] if sub.customer.discount else [])
        for discount in filter(active, discounts):
            coupon = discount.coupon
            if coupon.percent_off is not None:
                monthly *= 1 - Fraction(str(coupon.percent_off)) / 100
            elif coupon.amount_off:
                monthly -= Fraction(coupon.amount_off) / months
        amount = floor(max(monthly, Fraction(0)) + Fraction(1, 2))  # half-up, once per subscription
        customer = sub.customer.id
        mrr[customer][sub.currency] = mrr[customer].get(sub.currency, 0) + amount
    return {c: {k: v for k, v in by.items() if v} for c, by in mrr.items()}


def expected_flags(emulator: Emulator) -> dict[str, set[str]]:
    """The customers each flag should be raised for (PERLY_CONTRACT section 6, default policy)."""
    now = emulator.now
    customers = {c["id"]: c for c in emulator.objects("customers")}
    failed = Counter(
        c["customer"]
        for c in visible(emulator.objects("charges"), now)
        if c["status"] == "failed" and now - 30 * DAY < c["created"] <= now
    )
    trial_expiring = set()
    for sub in emulator.objects("subscriptions"):
        customer = customers.get(sub["customer"], {})
        has_payment_method = (
            sub.get("default_payment_method")
            or sub.get("default_source")
            or (customer.get("invoice_settings") or {}).get("default_payment_method")
            or customer.get("default_source")
        )
        if sub["status"] == "trialing" and 0 < sub["trial_end"] - now <= 3 * DAY and not has_payment_method:
            trial_expiring.add(sub["customer"])
    return {
        "flag_payment_failures": {customer for customer, n in failed.items() if n >= 2},
        "flag_invoice_aging": {
            i["customer"] for i in emulator.objects("invoices") if (days_past_due(i, now) or 0) >= 1
        },
        "flag_trial_expiring": trial_expiring,
        "flag_downgrade": downgrades_seen_in_events(emulator),
    }


def downgrades_seen_in_events(emulator: Emulator) -> set[str]:
    """Customers whose subscription moved down the plan ladder in an event Stripe still holds (30
    days, inside the flag's 90). Older downgrades are only labelled, without a date: see the test."""
    rank = {}
    for product in emulator.objects("products"):
        tier = (product.get("metadata") or {}).get("tier")
        if tier in LADDER:
            rank[product["id"]] = LADDER.index(tier)

    def top_rank(items: dict[str, Any]) -> int | None:
        ranks = [rank[i["price"]["product"]] for i in items["data"] if i["price"]["product"] in rank]
        return max(ranks, default=None)

    moved_down = set()
    for event in emulator.objects("events"):
        before_items = (event["data"].get("previous_attributes") or {}).get("items")
        if event["type"] != "customer.subscription.updated" or not before_items:
            continue
        before, after = top_rank(before_items), top_rank(event["data"]["object"]["items"])
        if before is not None and after is not None and after < before:
            moved_down.add(event["data"]["object"]["customer"])
    return moved_down


# Scenario labels that change nothing about MRR over time: such customers never show a contraction.
STEADY_LABELS = {
    "usd",
    "eur",
    "jpy",
    "annual",
    "tiered",
    "metered",
    "many_items",
    "coupon_forever",
    "item_coupon_forever",
}


# ---------------------------------------------------------------------------------------------------
# The syncs


@dataclass
class Phase:
    """The store read back after one sync, and what the emulator held at that moment."""

    name: str
    now: int
    customers: set[str]
    deleted_customers: set[str]
    statuses: dict[str, dict[str, str]]
    mrr: dict[str, dict[str, int]]
    flags: dict[str, set[str]]
    scenarios: dict[str, set[str]]
    health: dict[str, dict[str, Any]]
    stored: dict[str, dict[str, dict[str, Any]]]
    plan_changes: list[dict[str, Any]]
    records: int
    clock_sensitive: set[str]  # customers whose flags can move with the clock alone


def read_store(
    db: Path,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]], list[dict[str, Any]]]:
    connection = sqlite3.connect(db)
    connection.row_factory = sqlite3.Row
    health = {
        row["customer_id"]: dict(row) for row in connection.execute("SELECT * FROM perly_customer_health")
    }
    stored = {}
    for stream in ("customers", "subscriptions", "invoices", "charges"):
        rows = connection.execute(f"SELECT id, deleted, data FROM stripe_{stream}")
        stored[stream] = {row["id"]: {"deleted": row["deleted"], **json.loads(row["data"])} for row in rows}
    plan_changes = [dict(row) for row in connection.execute("SELECT * FROM perly_plan_changes")]
    connection.close()
    return health, stored, plan_changes


def capture(name: str, emulator: Emulator, db: Path, records: int) -> Phase:
    health, stored, plan_changes = read_store(db)
    statuses = {
        stream: {obj["id"]: obj["status"] for obj in visible(emulator.objects(stream), emulator.now)}
        for stream in ("subscriptions", "invoices", "charges")
    }
    deleted = {c for c, labels in emulator.scenarios().items() if "deleted_customer" in labels}
    return Phase(
        name,
        emulator.now,
        {c["id"] for c in visible(emulator.objects("customers"), emulator.now)},
        deleted,
        statuses,
        expected_mrr(emulator),
        expected_flags(emulator),
        emulator.scenarios(),
        health,
        stored,
        plan_changes,
        records,
        {
            obj["customer"]
            for stream, status in (("invoices", "open"), ("subscriptions", "trialing"))
            for obj in visible(emulator.objects(stream), emulator.now)
            if obj["status"] == status
        },
    )


@dataclass
class Pipeline:
    workdir: Path
    source_config: dict[str, Any]
    catalog: dict[str, Any]

    def sync(self, emulator: Emulator, db: Path, state: Path, **kwargs: Any) -> int:
        destination = {
            "store": {"store_type": "sqlite", "path": str(db)},
            "plan_tiers": plan_tiers(emulator.objects("products")),
            "as_of": iso(emulator.now),
        }
        result = run_sync(
            self.workdir / db.stem, self.source_config, destination, self.catalog, state, **kwargs
        )
        return result.total


def new_pipeline(emulator: Emulator, workdir: Path) -> Pipeline:
    source_config = emulator_source_config(emulator.url)
    catalog = configured_catalog(discover(write_json(workdir / "source_config.json", source_config)))
    return Pipeline(workdir, source_config, catalog)


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("e2e")
    db, state = workdir / "perly.db", workdir / "state.json"
    killed_db, killed_state = workdir / "killed.db", workdir / "killed-state.json"
    with Emulator(customers=CUSTOMERS, seed=SEED) as emulator:
        pipeline = new_pipeline(emulator, workdir)
        full = capture("full", emulator, db, pipeline.sync(emulator, db, state))
        # Killed part-way, then run again, against the same book: compared with `db` below.
        try:
            pipeline.sync(emulator, killed_db, killed_state, stop_after_records=full.records // 2)
            killed = "not killed"
        except SyncFailed as exc:
            killed = str(exc)
        acknowledged = json.loads(killed_state.read_text()) if killed_state.exists() else []
        resumed = pipeline.sync(emulator, killed_db, killed_state)
        kill_run = {
            "killed": killed,
            "acknowledged": acknowledged,
            "resumed_records": resumed,
            "resumed": table_contents(killed_db),
            "uninterrupted": table_contents(db),
        }
        advanced = emulator.advance(days=ADVANCE_DAYS)
        incremental = capture("incremental", emulator, db, pipeline.sync(emulator, db, state))
        new_event_ids = set(advanced["event_ids"])
        changed = {owner(e["data"]["object"]) for e in emulator.objects("events") if e["id"] in new_event_ids}
    return {"full": full, "incremental": incremental, "kill_run": kill_run, "changed": changed - {None}}


def owner(obj: dict[str, Any]) -> str | None:
    """The customer a Stripe object belongs to."""
    return obj["id"] if obj.get("object") == "customer" else obj.get("customer")


PHASES = ["full", "incremental"]


def live_health(phase: Phase) -> dict[str, dict[str, Any]]:
    return {c: row for c, row in phase.health.items() if not row.get("deleted")}


# ---------------------------------------------------------------------------------------------------
# The store after each sync


@pytest.mark.parametrize("name", PHASES)
def test_every_customer_is_in_the_store_with_a_health_row(phases: dict[str, Any], name: str) -> None:
    phase = phases[name]
    stored_live = {c for c, obj in phase.stored["customers"].items() if not obj["deleted"]}

    assert stored_live == phase.customers
    health = set(live_health(phase))
    assert not phase.customers - health, f"customers without a health row: {sorted(phase.customers - health)}"
    assert not health - phase.customers, (
        f"health rows of no live customer: {sorted(health - phase.customers)}"
    )
    as_of = {c: row["as_of"][:19] for c, row in live_health(phase).items()}
    if name == "full":
        assert set(as_of.values()) == {iso(phase.now)[:19]}
        return
    # After the incremental sync: every customer the clock advance changed, and every customer whose
    # flags can move with the clock alone (open invoices, trials), is recomputed as of now; the others
    # keep the row of the full sync (nothing about them changed).
    must_be_current = (phases["changed"] | phase.clock_sensitive) & phase.customers
    assert len(must_be_current) > len(phase.customers) // 4, "the advance should change many customers"
    stale = {c for c in must_be_current if as_of[c] != iso(phase.now)[:19]}
    assert not stale, f"not recomputed after the incremental sync: {sorted(stale)}"
    assert set(as_of.values()) <= {iso(phases["full"].now)[:19], iso(phase.now)[:19]}


@pytest.mark.parametrize("name", PHASES)
def test_deleted_customers_are_not_counted_as_live(phases: dict[str, Any], name: str) -> None:
    phase = phases[name]

    assert phase.deleted_customers, "the seeded book always deletes some customers"
    # Deleted before the first sync, a customer is not listed at all; deleted later, it arrives as a
    # tombstone. Either way it is not a live customer.
    not_tombstoned = [
        c
        for c in phase.deleted_customers
        if c in phase.stored["customers"] and not phase.stored["customers"][c]["deleted"]
    ]
    assert not not_tombstoned, f"deleted customers stored as live: {not_tombstoned}"
    counted = sorted(phase.deleted_customers & set(live_health(phase)))
    assert not counted, f"deleted customers with a live health row (deleted = 0): {counted}"


@pytest.mark.parametrize("flag", ["flag_payment_failures", "flag_invoice_aging", "flag_downgrade"])
def test_the_seeded_book_gives_each_flag_to_someone(phases: dict[str, Any], flag: str) -> None:
    # Keeps the exactness test below from passing on nothing. One phase is enough: a forced
    # downgrade, for one, may leave Stripe's 30 days of events during the advance.
    # (A trial ends within 3 days only on some seeds and dates.)
    assert any(phases[name].flags[flag] & phases[name].customers for name in PHASES)


@pytest.mark.parametrize("name", PHASES)
@pytest.mark.parametrize(
    "flag", ["flag_payment_failures", "flag_invoice_aging", "flag_trial_expiring", "flag_downgrade"]
)
def test_flag_is_raised_for_exactly_the_customers_the_scenarios_call_for(
    phases: dict[str, Any], name: str, flag: str
) -> None:
    phase = phases[name]
    raised = {c for c, row in live_health(phase).items() if row[flag]}
    expected = phase.flags[flag] & phase.customers
    if flag == "flag_downgrade":
        # A downgrade older than Stripe's events is labelled without a date: it may or may not be
        # inside the 90 days, so such customers may be flagged; nobody else may.
        labelled = {c for c, labels in phase.scenarios.items() if "downgraded" in labels}
        raised -= labelled - expected

    details = {
        c: (sorted(phase.scenarios.get(c, ())), live_health(phase)[c]["risk_reasons"])
        for c in raised ^ expected
    }
    assert raised == expected, f"raised but not expected, or expected but not raised: {details}"


@pytest.mark.parametrize("name", PHASES)
def test_mrr_contraction_is_raised_after_downgrades_and_never_for_steady_customers(
    phases: dict[str, Any], name: str
) -> None:
    phase = phases[name]
    health = live_health(phase)
    raised = {c for c, row in health.items() if row["flag_mrr_contraction"]}
    only_downgraded = {
        c for c in phase.flags["flag_downgrade"] if phase.scenarios[c] - STEADY_LABELS == {"downgraded"}
    }
    steady = {c for c, labels in phase.scenarios.items() if labels <= STEADY_LABELS and c in health}

    missed = {c: health[c]["risk_reasons"] for c in only_downgraded & set(health) - raised}
    assert not missed, f"downgraded, yet no MRR contraction: {missed}"
    assert steady
    wrong = {c: (sorted(phase.scenarios[c]), health[c]["risk_reasons"]) for c in raised & steady}
    assert not wrong, f"steady customers flagged for MRR contraction: {wrong}"


def test_tier_changes_older_than_the_events_are_dated_by_their_proration_lines(
    phases: dict[str, Any],
) -> None:
    phase = phases["full"]  # the first sync: before the last 30 days, only invoices tell the story
    oldest_event = phase.now - 30 * DAY
    expected = set()
    for invoice in phase.stored["invoices"].values():
        lines = (invoice.get("lines") or {}).get("data") or []
        prorations = [line for line in lines if line["parent"]["subscription_item_details"]["proration"]]
        prices = {line["pricing"]["price_details"]["price"] for line in prorations}
        if len(prices) == 2 and invoice["created"] < oldest_event:  # another price: a tier change
            expected.add((invoice["customer"], invoice["created"]))
    assert expected, "the seeded book should have old tier changes"
    dated = {
        (c["customer_id"], unix(c["at"])) for c in phase.plan_changes if c["kind"] in ("upgrade", "downgrade")
    }
    assert expected <= dated, f"not dated at their proration: {sorted(expected - dated)}"


@pytest.mark.parametrize("name", PHASES)
def test_mrr_equals_an_independent_sum_over_the_emulators_subscriptions(
    phases: dict[str, Any], name: str
) -> None:
    phase = phases[name]
    stored = {
        customer: {k: v for k, v in json.loads(row["mrr_by_currency"] or "{}").items() if v}
        for customer, row in live_health(phase).items()
    }
    expected = {customer: phase.mrr.get(customer, {}) for customer in phase.customers}

    wrong = {c: (stored.get(c), expected[c]) for c in expected if stored.get(c) != expected[c]}
    assert not wrong, (
        f"{len(wrong)} customers with another MRR (stored, expected): {dict(list(wrong.items())[:5])}"
    )
    assert sum(v for by in expected.values() for v in by.values()) > 0


def test_clock_advance_changes_are_in_the_store(phases: dict[str, Any]) -> None:
    full, incremental = phases["full"], phases["incremental"]

    assert incremental.customers - full.customers, "the advance signs up new customers"
    assert 0 < incremental.records < full.records  # incremental: only what changed
    for stream, statuses in incremental.statuses.items():
        stored = {i: obj.get("status") for i, obj in incremental.stored[stream].items() if i in statuses}
        assert stored == statuses, f"{stream}: statuses differ from the emulator's after the advance"
    changed = {
        sub: status
        for sub, status in incremental.statuses["subscriptions"].items()
        if full.statuses["subscriptions"].get(sub) not in (None, status)
    }
    assert changed, "the advance changes some subscription's status"


# ---------------------------------------------------------------------------------------------------
# Killed part-way, then run again


def table_contents(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every Perly and Stripe table's rows, sorted, without the per-run generation id."""
    connection = sqlite3.connect(db)
    tables = [
        name
        for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if (name.startswith("stripe_") or name.startswith("perly_"))
        and not name.endswith("_stage")
        and name not in ("perly_dirty_customers", "perly_check_probe")
    ]
    contents = {}
    for table in tables:
        columns = [c[1] for c in connection.execute(f"PRAGMA table_info({table})") if c[1] != "generation_id"]
        rows = connection.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
        contents[table] = sorted(rows, key=repr)
    connection.close()
    return contents


def test_sync_killed_part_way_then_rerun_ends_in_the_same_store(phases: dict[str, Any]) -> None:
    run = phases["kill_run"]

    assert "killed after" in run["killed"]
    assert run["acknowledged"], "the killed run had committed some state, so the re-run resumed"
    assert run["resumed_records"] < phases["full"].records
    differing = [t for t in run["uninterrupted"] if run["resumed"].get(t) != run["uninterrupted"][t]]
    assert not differing, f"tables differ after the kill and re-run: {differing}"
    assert set(run["resumed"]) == set(run["uninterrupted"])
