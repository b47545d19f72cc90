"""Figure parity (issue 10, PERLY_CONTRACT.md section 9): the recommended restricted key (Read on
Customers, Subscriptions, Invoices and Charges) gives the health a full key gives.

Each book is synced by two pipelines, the full key (every stream) and `rk_test_perly_billing` (the 4
core streams): a first sync, the clock moves on, an incremental sync from the acknowledged state.
After each, every figure of `perly_customer_health` must be equal, except:

- the tier *name*, also where a downgrade's reason quotes it (without Read on Products it is the
  price's lookup key, else its nickname, else the product id);
- `as_of` and `tenure_days` of rows one pipeline did not recompute (nothing about them changed);
- a row whose `limitations` names what the 4 permissions cannot tell (a coupon no invoice has used
  yet: `once` or `forever`?), with the permission that restores it: there only the figures that
  limitation is about (MRR and what follows from it) may differ.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integration_tests.demo import (
    configured_catalog,
    discover,
    emulator_source_config,
    health_snapshot,
    iso,
    plan_tiers,
    run_sync,
    write_json,
)
from integration_tests.stripe_emulator import Emulator

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

FULL_KEY, BILLING_KEY = "sk_test_perly_demo", "rk_test_perly_billing"
ADVANCE_DAYS = 7
# (customers, seed, plan map): the first book holds every scripted scenario (tiered, metered,
# discounted, item discount, multi-currency, paused...) twice and maps the plan ladder; the others
# are small books of other seeds, one without a map (plans ranked by monthly unit price).
BOOKS = [(70, 42, True), (30, 2026, False), (20, 7, True)]
# A downgrade's reason names the tiers: without Read on Products those names differ, nothing else.
TIER_NAMES = re.compile(r"^Downgraded from .* to .* on ")
# Figures a coupon whose duration the key cannot tell moves (the limitation says MRR).
MRR_FIGURES = {"mrr", "mrr_by_currency", "mrr_30d_ago", "mrr_change_30d", "flag_mrr_contraction"}
NOT_FIGURES = {"plan_tier", "as_of", "tenure_days", "limitations"}  # see the module doc


@dataclass
class Book:
    scenarios: dict[str, set[str]]
    # phase -> key -> customer -> health row
    health: dict[str, dict[str, dict[str, dict[str, Any]]]]


def run_book(customers: int, seed: int, mapped: bool, workdir: Path) -> Book:
    health: dict[str, dict[str, dict[str, dict[str, Any]]]] = {"first": {}, "incremental": {}}
    with Emulator(customers=customers, seed=seed) as emulator:
        full_config = emulator_source_config(emulator.url)
        # One catalog for both: the restricted key's source skips the streams it cannot read.
        catalog = configured_catalog(discover(write_json(workdir / "source.json", full_config)))
        pipes = {key: ({**full_config, "api_key": key}, catalog) for key in (FULL_KEY, BILLING_KEY)}
        for phase in ("first", "incremental"):
            if phase == "incremental":
                emulator.advance(days=ADVANCE_DAYS)
            tiers = plan_tiers(emulator.objects("products")) if mapped else []
            as_of = iso(emulator.now)

            def sync(key: str, phase: str = phase, tiers: Any = tiers, as_of: str = as_of) -> None:
                config, catalog = pipes[key]
                store = workdir / key / "perly.db"
                destination = {
                    "store": {"store_type": "sqlite", "path": str(store)},
                    "plan_tiers": tiers,
                    "as_of": as_of,
                }
                run_sync(workdir / key / phase, config, destination, catalog, workdir / key / "state.json")
                health[phase][key] = health_snapshot(store)

            with ThreadPoolExecutor(max_workers=2) as pool:  # the two pipelines side by side
                list(pool.map(sync, pipes))
        scenarios = emulator.scenarios()
    return Book(scenarios, health)


@pytest.fixture(
    scope="module",
    params=BOOKS,
    ids=[f"{n}-customers-seed-{seed}-{'mapped' if mapped else 'no-map'}" for n, seed, mapped in BOOKS],
)
def book(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Book:
    customers, seed, mapped = request.param
    return run_book(customers, seed, mapped, tmp_path_factory.mktemp(f"parity-{seed}"))


def reasons_without_tier_names(row: dict[str, Any]) -> list[str]:
    return [TIER_NAMES.sub("Downgraded on ", reason) for reason in json.loads(row["risk_reasons"])]


def differences(full: dict[str, Any], restricted: dict[str, Any]) -> set[str]:
    found = {name for name in full if name not in NOT_FIGURES and full[name] != restricted.get(name)}
    if reasons_without_tier_names(full) == reasons_without_tier_names(restricted):
        found.discard("risk_reasons")
    if full["as_of"] == restricted["as_of"] and full["tenure_days"] != restricted["tenure_days"]:
        found.add("tenure_days")
    if set(found) <= MRR_FIGURES | {"risk_score", "risk_reasons"} and any(
        text.startswith("MRR:") and "rak_coupon_read" in text
        for text in json.loads(restricted["limitations"])
    ):
        return set()  # named in the row: the coupon's duration is not readable with this key
    return found


def unexplained(book: Book, phase: str) -> dict[str, set[str]]:
    full, restricted = book.health[phase][FULL_KEY], book.health[phase][BILLING_KEY]
    assert set(full) == set(restricted), "both keys see every customer"
    return {
        customer: found for customer, row in full.items() if (found := differences(row, restricted[customer]))
    }


def test_the_seeded_book_holds_every_shape_the_figures_depend_on() -> None:
    customers, seed, _ = BOOKS[0]
    with Emulator(customers=customers, seed=seed) as emulator:
        labels = set().union(*emulator.scenarios().values())
    assert {
        "tiered",
        "metered",
        "coupon_forever",
        "item_coupon_forever",
        "customer_discount",
        "eur",
        "jpy",
        "paused",
        "pause_collection",
        "tax_inclusive",
        "weekly",
        "quarterly",
        "past_due",
    } <= labels


@pytest.mark.parametrize("phase", ["first", "incremental"])
def test_every_health_figure_is_the_same_with_the_restricted_key(book: Book, phase: str) -> None:
    assert unexplained(book, phase) == {}


@pytest.mark.parametrize("phase", ["first", "incremental"])
def test_the_full_key_rows_never_carry_limitations_and_the_restricted_ones_name_a_permission(
    book: Book, phase: str
) -> None:
    full, restricted = book.health[phase][FULL_KEY], book.health[phase][BILLING_KEY]
    assert all(json.loads(row["limitations"]) == [] for row in full.values())
    for row in restricted.values():
        assert all("rak_" in text for text in json.loads(row["limitations"]))
