"""perly-report: what a user reads in the terminal and in the HTML page, from a known store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from destination_perly.report import build_report, format_money, main, read_report, render_html, sqlite_query
from integration_tests.postgres import postgres_dsn, store_settings
from integration_tests.report_store import fill, write_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "perly.db")


def test_given_store_when_reported_then_at_risk_ranked_by_score_without_healthy_or_deleted(
    store: Path,
) -> None:
    report = read_report(sqlite_query(store))

    assert [c.customer_id for c in report.at_risk] == ["cus_failing", "cus_shrinking"]
    assert report.at_risk[0].flags == ["payment failures", "invoice aging"]
    assert report.at_risk[1].flags == ["downgrade", "MRR contraction"]
    assert report.at_risk[0].reasons[0] == "3 failed payments in the last 30 days"


def test_given_two_currencies_when_reported_then_mrr_is_summed_per_currency_never_across(store: Path) -> None:
    report = read_report(sqlite_query(store))

    assert report.customers == 4  # the deleted customer is not counted
    assert report.mrr_by_currency == {"usd": 5000 + 12000 + 2000, "jpy": 30000}


def test_given_default_period_then_only_movements_of_the_last_30_days_count(store: Path) -> None:
    report = read_report(sqlite_query(store))

    assert report.as_of == datetime(2026, 11, 8, tzinfo=UTC)  # newest as_of in the store, not the wall clock
    by_kind = {(m.currency, m.kind): (m.count, m.delta) for m in report.movements}
    assert by_kind == {
        ("usd", "new"): (1, 5000),
        ("usd", "contraction"): (1, -3000),
        ("usd", "churn"): (1, -7000),
        ("jpy", "expansion"): (1, 10000),
    }
    assert report.net_change("usd") == -5000


def test_given_since_then_movements_before_it_are_left_out(store: Path) -> None:
    report = read_report(sqlite_query(store), period_start=datetime(2026, 11, 4, tzinfo=UTC))

    assert {m.kind for m in report.movements} == {"churn", "expansion"}


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (123456, "usd", "USD 1,234.56"),
        (-7000, "eur", "EUR -70.00"),
        (30000, "jpy", "JPY 30,000"),  # zero-decimal: never divided by 100
        (1500, "kwd", "KWD 1.500"),
    ],
    ids=["usd", "negative", "zero-decimal", "three-decimal"],
)
def test_money_is_shown_in_major_units_of_its_currency(amount: int, currency: str, shown: str) -> None:
    assert format_money(amount, currency) == shown


def test_given_store_when_cli_runs_then_terminal_shows_summary_and_ranked_list(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(store)]) == 0
    out = capsys.readouterr().out

    assert "Customers: 4" in out
    assert "MRR: JPY 30,000 | USD 190.00" in out
    ranked = [line.split()[2] for line in out.splitlines() if re.match(r"\s*\d+\s+\d+\s+cus_", line)]
    assert ranked == ["cus_failing", "cus_shrinking"]
    assert "- invoice 12 days past due (USD 120.00)" in out


def test_given_no_store_when_cli_runs_then_it_says_so_and_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "destination_perly.report", "--db", str(tmp_path / "missing.db")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "run a sync first" in result.stderr
    assert not (tmp_path / "missing.db").exists()  # read-only: the report never creates a store


def test_html_page_is_self_contained_and_escapes_customer_text(store: Path) -> None:
    page = render_html(read_report(sqlite_query(store)))

    assert "&lt;b&gt;Shrink &amp; Co&lt;/b&gt;" in page
    assert "<b>Shrink" not in page
    # Nothing is fetched: no scripts, stylesheets or images from elsewhere (xmlns is only a name).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page
    assert page.count('class="at-risk"') == 2
    assert page.count('<svg class="chart"') == 2  # one chart per currency


def test_movement_chart_has_a_signed_bar_per_kind_and_the_net(store: Path) -> None:
    page = render_html(read_report(sqlite_query(store)))
    usd = re.search(r'<svg class="chart" data-currency="usd".*?</svg>', page, re.S)
    assert usd is not None
    bars = re.findall(r'data-kind="(\w+)" data-amount="(-?\d+)" x="[\d.]+" y="([\d.]+)"', usd.group(0))
    amounts = {kind: int(amount) for kind, amount, _ in bars}
    tops = {kind: float(y) for kind, _, y in bars}

    assert list(amounts) == ["new", "contraction", "churn", "net"]
    assert amounts == {"new": 5000, "contraction": -3000, "churn": -7000, "net": -5000}
    assert tops["new"] < tops["churn"]  # gains rise above the zero line, losses hang below it


def test_empty_store_reports_no_customers_instead_of_failing() -> None:
    report = build_report([], [])

    assert report.customers == 0
    assert report.at_risk == []
    assert report.as_of is None
    assert "No customer at risk" in render_html(report)


def test_given_destination_config_when_cli_runs_then_it_reads_the_configured_sqlite_store(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "destination.json"
    config.write_text(json.dumps({"store": {"store_type": "sqlite", "path": str(store)}}), encoding="utf-8")

    assert main(["--config", str(config), "--top", "1"]) == 0
    out = capsys.readouterr().out

    assert "At-risk customers: 2 (top 1 shown)" in out
    assert "cus_failing" in out
    assert "cus_shrinking" not in out


def test_unreachable_postgres_store_fails_cleanly_without_showing_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = {
        "store_type": "postgres",
        "host": "127.0.0.1",
        "port": 1,
        "database": "perly",
        "username": "perly",
    }
    config = tmp_path / "destination.json"
    config.write_text(json.dumps({"store": store | {"password": "s3cret-Pa55", "ssl_mode": "disable"}}))

    assert main(["--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert "perly-report:" in captured.err
    assert "s3cret-Pa55" not in captured.err + captured.out


@pytest.mark.postgres
def test_given_postgres_destination_config_then_the_report_reads_that_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from destination_perly.store.postgres import PostgresStore

    dsn = postgres_dsn()
    schema = f"perly_report_{uuid.uuid4().hex[:8]}"
    fill(PostgresStore(dsn=dsn, schema=schema)).close()
    store = store_settings(dsn, schema)
    config = tmp_path / "destination.json"
    config.write_text(json.dumps({"store": store}))
    try:
        assert main(["--config", str(config)]) == 0
    finally:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    out = capsys.readouterr().out

    assert "Customers: 4" in out
    assert "MRR: JPY 30,000 | USD 190.00" in out
    assert out.index("cus_failing") < out.index("cus_shrinking")
