"""Over the emulator's book: every customer with a warning sign scores above 0 with the matching reason,
and `perly-report --backtest` prints its figures on the synced store."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from destination_perly import report
from destination_perly.backtest import score_at
from destination_perly.health import HealthConfig
from destination_perly.health.values import to_time
from destination_perly.store.sqlite import SqliteStore
from integration_tests.emulator_store import fill, synced_store
from integration_tests.postgres import postgres_dsn, store_settings
from integration_tests.stripe_emulator import Emulator

pytestmark = pytest.mark.emulator

# A warning sign in the health row -> the start of the reason that must explain it.
SIGNS: dict[str, tuple[Any, str]] = {
    "cancel_at_period_end": (lambda row: bool(row["cancel_at_period_end"]), "cancels on "),
    "payment_risk_high": (lambda row: row["payment_risk"] == "high", "payment risk high: "),
    "payment_risk_critical": (lambda row: row["payment_risk"] == "critical", "payment risk critical: "),
    "flag_payment_failures": (lambda row: bool(row["flag_payment_failures"]), "failed payments in the last"),
    "flag_downgrade": (lambda row: bool(row["flag_downgrade"]), "Downgraded from "),
    "flag_invoice_aging": (lambda row: bool(row["flag_invoice_aging"]), "open invoice(s) past due, oldest"),
    "flag_trial_expiring": (lambda row: bool(row["flag_trial_expiring"]), "Trial of "),
    "flag_mrr_contraction": (lambda row: bool(row["flag_mrr_contraction"]), "MRR fell from "),
}


@pytest.fixture(scope="module")
def synced(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("score") / "perly.db"
    synced_store(emulator, path).close()
    return path


@pytest.fixture(scope="module")
def rows(synced: Path) -> list[dict[str, Any]]:
    store = SqliteStore(synced)
    try:
        found = store.query("SELECT * FROM perly_customer_health WHERE deleted = 0")
    finally:
        store.close()
    for row in found:
        row["risk_reasons"] = json.loads(row["risk_reasons"])
    return found


@pytest.mark.parametrize("sign", SIGNS)
def test_every_customer_with_a_warning_sign_scores_above_0_with_the_matching_reason(
    rows: list[dict[str, Any]], sign: str
) -> None:
    shows, reason_start = SIGNS[sign]
    having = [row for row in rows if row["subscription_health"] != "churned" and shows(row)]
    missed = {
        row["customer_id"]: (row["risk_score"], row["risk_reasons"])
        for row in having
        if row["risk_score"] <= 0 or not any(reason_start in reason for reason in row["risk_reasons"])
    }
    assert not missed, f"{sign} without a score or its reason: {missed}"
    if sign in ("cancel_at_period_end", "payment_risk_high", "flag_payment_failures", "flag_downgrade"):
        assert having, f"the seeded book should hold customers with {sign}"


def test_churned_customers_have_no_score_and_everyone_else_with_a_score_has_reasons(
    rows: list[dict[str, Any]],
) -> None:
    churned = [row for row in rows if row["subscription_health"] == "churned"]
    assert churned
    assert all(row["risk_score"] == 0 and row["risk_reasons"] == [] for row in churned)
    assert all(row["risk_reasons"] for row in rows if row["risk_score"] > 0)


def test_backtest_command_prints_sample_sizes_auc_and_top_decile_figures(
    synced: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main(["--backtest", "--db", str(synced), "--horizon-days", "20"]) == 0
    figures = dict(line.strip().split(": ", 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert figures["Churn looked for within"] == "20 days"
    assert int(figures["Customers scored (paying then)"].replace(",", "")) > 100
    assert 0 < int(figures["Of them, churned within the horizon"]) < 100
    assert 0.5 < float(figures["ROC AUC (0.5 is chance, 1.0 a perfect ranking)"]) <= 1
    for figure in ("Top 10% by score", "Precision of the top 10%", "Recall of the top 10%"):
        assert figure in figures
    assert " of USD " in figures["Churned USD MRR caught by the top 10%"]


def test_backtest_command_refuses_a_horizon_not_observed_yet(
    synced: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main(["--backtest", "--db", str(synced), "--as-of", "2026-10-20T00:00:00Z"]) == 2
    assert "not known yet" in capsys.readouterr().err


def test_backtest_command_on_a_missing_store_is_a_clear_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    assert report.main(["--backtest", "--db", str(missing)]) == 2
    assert "no SQLite store" in capsys.readouterr().err
    assert not missing.exists()


def test_scores_rebuilt_for_a_past_date_match_the_scores_computed_on_that_date(
    emulator_factory: Any, tmp_path: Path
) -> None:
    # Sync on day T, let 20 days pass, sync again: the backtest's scores for day T, from the second
    # store, are the ones the first store computed on day T (the few left differ by the MRR history
    # older than Stripe's 30 days of events, which the live history rebuilds from invoices).
    emulator = emulator_factory(customers=300, seed=7)
    then_store = synced_store(emulator, tmp_path / "then.db")
    then = {row["customer_id"]: row for row in then_store.query("SELECT * FROM perly_customer_health")}
    as_of = datetime.fromtimestamp(emulator.now, UTC)
    emulator.advance(days=20)
    now_store = synced_store(emulator, tmp_path / "now.db")
    oldest_event = now_store.query("SELECT MIN(created) AS oldest FROM stripe_events")[0]["oldest"]
    bundles = now_store.load_bundles(list(then))
    differ = {}
    for customer_id, row in then.items():
        rebuilt = score_at(bundles[customer_id], HealthConfig(), as_of, to_time(oldest_event))
        assert rebuilt is not None
        if (rebuilt.risk_score, rebuilt.mrr, rebuilt.subscription_health) != (
            row["risk_score"],
            row["mrr"],
            row["subscription_health"],
        ):
            differ[customer_id] = (row["risk_reasons"], rebuilt.risk_reasons)
    assert len(differ) <= len(then) * 0.02, differ


def test_backtest_command_reads_the_store_a_destination_config_names(
    synced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "destination.json"
    config.write_text(json.dumps({"store": {"store_type": "sqlite", "path": str(synced)}}), encoding="utf-8")
    assert report.main(["--backtest", "--config", str(config)]) == 0
    assert "Customers scored (paying then): " in capsys.readouterr().out


@pytest.mark.postgres
def test_backtest_on_postgresql_gives_the_figures_of_sqlite(
    emulator: Emulator, synced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    from destination_perly.store.postgres import PostgresStore

    dsn = postgres_dsn()
    schema = f"perly_backtest_{uuid.uuid4().hex[:8]}"
    config = tmp_path / "destination.json"
    config.write_text(json.dumps({"store": store_settings(dsn, schema)}), encoding="utf-8")
    try:
        store = PostgresStore(dsn=dsn, schema=schema)
        fill(emulator, store)
        store.close()
        assert report.main(["--backtest", "--config", str(config)]) == 0
        on_postgres = capsys.readouterr().out
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert report.main(["--backtest", "--db", str(synced)]) == 0
    assert on_postgres == capsys.readouterr().out


def test_backtest_command_leaves_the_sqlite_file_as_it_was(
    synced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A store whose journal mode is not WAL: opening it to write would switch it (a write)
    copy = tmp_path / "copy.db"
    with sqlite3.connect(synced) as source, sqlite3.connect(copy) as target:
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")
    before = copy.read_bytes()
    assert report.main(["--backtest", "--db", str(copy)]) == 0
    assert "Customers scored (paying then): " in capsys.readouterr().out
    assert copy.read_bytes() == before
