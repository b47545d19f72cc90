"""perly-report: what a user reads in the terminal and in the HTML page, from a known store."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from destination_perly.report import (
    AT_RISK_TITLE,
    CHURNED_TITLE,
    build_report,
    main,
    movement_rows,
    open_report_store,
    read_report,
    render_at_risk,
    render_html,
    render_summary,
)
from integration_tests.postgres import postgres_dsn, store_settings
from integration_tests.report_store import AT_RISK, fill, write_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "perly.db")


def test_given_store_when_reported_then_every_non_churned_customer_with_a_score_is_listed_in_rank_order(
    store: Path,
) -> None:
    report = read_report(open_report_store(db=store).query)

    # Healthy but cancelling at period end is listed (its score is above 0); churned, deleted and
    # score-0 customers are not. Tied on 35: EUR first (currencies by code, never amounts compared
    # across them), then USD by MRR at stake, USD 90.00 before USD 20.00.
    assert [c.customer_id for c in report.at_risk] == AT_RISK
    assert [c.risk_score for c in report.at_risk] == [80, 35, 35, 35]
    assert report.at_risk[0].flags == ["payment failures", "invoice aging"]
    assert report.at_risk[3].flags == ["downgrade", "MRR contraction"]
    assert report.at_risk[0].reasons[0] == "3 failed payments in the last 30 days"
    assert report.at_risk[2].reasons == ["cancels on 2026-11-30 (cancel_at_period_end)"]


def test_given_customers_churned_in_and_before_the_period_then_only_the_recent_one_is_listed_for_win_back(
    store: Path,
) -> None:
    report = read_report(open_report_store(db=store).query)

    assert [(c.customer_id, c.currency, c.mrr_lost, c.churn_type) for c in report.recently_churned] == [
        ("cus_lost", "usd", 4000, "involuntary")
    ]
    assert report.recently_churned[0].churned_at == datetime(2026, 11, 7, 8, tzinfo=UTC)
    assert "cus_lost" not in {c.customer_id for c in report.at_risk}  # a leftover score does not list it


def test_ties_on_score_never_compare_amounts_across_currencies() -> None:
    def row(customer_id: str, currency: str, mrr: int) -> dict[str, object]:
        return {
            "customer_id": customer_id,
            "currency": currency,
            "mrr": mrr,
            "risk_score": 50,
            "subscription_health": "at_risk",
        }

    rows = [row("cus_a", "usd", 100), row("cus_b", "jpy", 500000), row("cus_c", "usd", 9000)]
    rows.append(row("cus_d", "jpy", 200))
    report = build_report(rows, [])

    assert [c.customer_id for c in report.at_risk] == ["cus_b", "cus_d", "cus_c", "cus_a"]


def test_counts_agree_between_the_summary_the_lists_and_the_html(store: Path) -> None:
    report = read_report(open_report_store(db=store).query)
    summary, lists, page = render_summary(report), render_at_risk(report), render_html(report)

    assert f"{AT_RISK_TITLE}: 4" in summary.splitlines()
    assert f"{AT_RISK_TITLE}: 4" in lists.splitlines()
    assert f"{CHURNED_TITLE}: 1" in summary.splitlines()
    assert f"{CHURNED_TITLE}: 1" in lists.splitlines()
    listed = [line.split()[2] for line in lists.splitlines() if re.match(r"\s*\d+\s+\d+\s+cus_", line)]
    assert listed == AT_RISK
    assert '<div class="count" id="summary-at-risk-count">4</div>' in page
    assert '<span id="at-risk-count">4</span>' in page
    assert page.count('class="at-risk"') == 4
    assert '<div class="count" id="summary-churned-count">1</div>' in page
    assert page.count('class="churned"') == 1
    assert html.escape(AT_RISK_TITLE) in page


def test_each_listed_customer_links_to_its_stripe_dashboard_page_in_its_mode(store: Path) -> None:
    report = read_report(open_report_store(db=store).query)
    lists, page = render_at_risk(report), render_html(report)

    live = "https://dashboard.stripe.com/customers/cus_failing"  # the store's one live-mode customer
    test = "https://dashboard.stripe.com/test/customers/cus_paris"
    assert f"        {live}" in lists.splitlines()
    assert f"        {test}" in lists.splitlines()
    assert f'<a href="{live}" rel="noopener noreferrer">cus_failing</a>' in page
    assert f'<a href="{test}" rel="noopener noreferrer">cus_paris</a>' in page
    assert 'href="https://dashboard.stripe.com/test/customers/cus_lost"' in page  # the win-back list too


def test_given_two_currencies_when_reported_then_mrr_is_summed_per_currency_never_across(store: Path) -> None:
    report = read_report(open_report_store(db=store).query)

    assert report.customers == 8  # the deleted customer is not counted
    assert report.mrr_by_currency == {"usd": 5000 + 12000 + 2000 + 9000, "eur": 1000, "jpy": 30000}


def test_given_default_period_then_only_movements_of_the_last_30_days_count(store: Path) -> None:
    report = read_report(open_report_store(db=store).query)

    assert report.as_of == datetime(2026, 11, 8, tzinfo=UTC)  # newest as_of in the store, not the wall clock
    by_kind = {(m.currency, m.kind): (m.count, m.delta) for m in report.movements}
    assert by_kind == {
        ("usd", "new"): (1, 5000),
        ("usd", "contraction"): (1, -3000),
        ("usd", "churn"): (2, -7000 - 4000),
        ("jpy", "expansion"): (1, 10000),
    }
    assert report.net_change("usd") == -9000


def test_given_since_then_movements_before_it_are_left_out(store: Path) -> None:
    report = read_report(open_report_store(db=store).query, period_start=datetime(2026, 11, 4, tzinfo=UTC))

    assert {m.kind for m in report.movements} == {"churn", "expansion"}


def test_given_store_when_cli_runs_then_terminal_shows_summary_and_ranked_list(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(store)]) == 0
    out = capsys.readouterr().out

    assert "Customers: 8 (by subscription health: at_risk 2, churned 2, healthy 4)" in out
    assert "MRR: EUR 10.00 | JPY 30,000 | USD 280.00" in out
    ranked = [line.split()[2] for line in out.splitlines() if re.match(r"\s*\d+\s+\d+\s+cus_", line)]
    assert ranked == AT_RISK
    assert "- invoice 12 days past due (USD 120.00)" in out
    assert re.search(r"USD\s+net\s+USD -90\.00", out)


def test_the_html_movement_table_has_the_terminals_rows_net_included(store: Path) -> None:
    report = read_report(open_report_store(db=store).query)
    terminal = [
        tuple(re.split(r"\s{2,}", line.strip()))
        for line in render_summary(report).splitlines()
        if re.match(r"\s+(USD|JPY)\s", line)
    ]
    page = render_html(report)
    cells = re.findall(r'<tr class="(?:movement|net)">(.*?)</tr>', page)
    in_html = [tuple(c for c in re.findall(r"<td[^>]*>(.*?)</td>", row) if c) for row in cells]

    assert ("USD", "net", "USD -90.00") in terminal
    assert in_html == terminal
    assert [row[:2] for row in movement_rows(report)][-1] == ("USD", "net")


def test_every_amount_in_the_html_page_carries_its_currency(store: Path) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", " ", render_html(read_report(open_report_store(db=store).query))))
    amounts = re.finditer(
        r"(?<![\w.,])[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])[+-]?\d+\.\d{2,3}\b", text
    )
    bare = [m.group(0) for m in amounts if not re.search(r"\b[A-Z]{3} $", text[: m.start()])]

    assert bare == []
    assert "JPY +10,000" in text
    assert "USD -90.00" in text


def test_a_small_change_does_not_fill_its_chart_like_a_large_one_fills_another() -> None:
    # The demo: EUR +22.50 next to EUR 85,392.52 of MRR, JPY +337,000 next to JPY 3,358,650.
    health = [
        {"customer_id": "cus_eur", "mrr_by_currency": {"eur": 8539252}},
        {"customer_id": "cus_jpy", "mrr_by_currency": {"jpy": 3358650}},
    ]
    moves = [
        {
            "customer_id": "cus_eur",
            "at": "2026-11-05T00:00:00Z",
            "kind": "new",
            "currency": "eur",
            "delta": 2250,
        },
        {
            "customer_id": "cus_jpy",
            "at": "2026-11-05T00:00:00Z",
            "kind": "new",
            "currency": "jpy",
            "delta": 337000,
        },
    ]
    page = render_html(build_report(health, moves, as_of=datetime(2026, 11, 9, tzinfo=UTC)))

    def net_bar_share(currency: str) -> float:
        chart = re.search(rf'<svg class="chart" data-currency="{currency}".*?</svg>', page, re.S)
        assert chart is not None
        ticks = [
            float(y)
            for y in re.findall(r'<text class="tick" data-amount="-?\d+" x="[\d.]+" y="([\d.]+)"', chart[0])
        ]
        bar = re.search(
            r'data-kind="net" data-amount="\d+" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"',
            chart[0],
        )
        assert bar is not None
        assert len(ticks) >= 3
        return float(bar[1]) / (max(ticks) - min(ticks))

    assert net_bar_share("eur") < 0.01
    assert net_bar_share("jpy") > 0.3
    assert "Axis from EUR -10,000.00 to EUR +10,000.00" in page  # the scale is stated, in the currency


def test_html_page_is_self_contained_and_escapes_customer_text(store: Path) -> None:
    page = render_html(read_report(open_report_store(db=store).query))

    assert "&lt;b&gt;Shrink &amp; Co&lt;/b&gt;" in page
    assert "<b>Shrink" not in page
    # Nothing is fetched: no scripts, stylesheets, images or fonts from elsewhere (links are only links).
    assert not re.search(r"""(src|srcset)\s*=|<link\b|@import|url\(""", page)
    assert "<script" not in page
    assert page.count('<svg class="chart"') == 2  # one chart per currency that moved


def test_movement_chart_has_a_signed_bar_per_kind_and_the_net(store: Path) -> None:
    page = render_html(read_report(open_report_store(db=store).query))
    usd = re.search(r'<svg class="chart" data-currency="usd".*?</svg>', page, re.S)
    assert usd is not None
    bars = re.findall(r'data-kind="(\w+)" data-amount="(-?\d+)" x="[\d.]+" y="([\d.]+)"', usd.group(0))
    amounts = {kind: int(amount) for kind, amount, _ in bars}
    tops = {kind: float(y) for kind, _, y in bars}

    assert list(amounts) == ["new", "contraction", "churn", "net"]
    assert amounts == {"new": 5000, "contraction": -3000, "churn": -11000, "net": -9000}
    assert tops["new"] < tops["churn"]  # gains rise above the zero line, losses hang below it
    assert re.findall(r'class="amount">([^<]+)<', usd.group(0)) == [
        "USD +50.00",
        "USD -30.00",
        "USD -110.00",
        "USD -90.00",
    ]


@dataclass(frozen=True)
class Backtest:
    """The fields of destination_perly.backtest's result that the report shows."""

    as_of: datetime
    horizon_days: int
    customers: int
    churned: int
    auc: float | None
    top_decile: int
    top_decile_churned: int
    precision: float | None
    recall: float | None
    churned_mrr_by_currency: dict[str, int]
    captured_mrr_by_currency: dict[str, int]


def test_the_html_page_shows_the_backtest_figures_when_the_report_has_them(store: Path) -> None:
    report = read_report(open_report_store(db=store).query)
    assert "No backtest in this report" in render_html(report)

    churned_mrr, caught = {"usd": 250000, "jpy": 90000}, {"usd": 125000}
    report.backtest = Backtest(
        datetime(2026, 10, 1, tzinfo=UTC), 30, 1800, 64, 0.8123, 180, 27, 0.15, 0.4219, churned_mrr, caught
    )
    section = re.search(r'<section id="backtest">.*?</section>', render_html(report), re.S)

    assert section is not None
    figures = dict(re.findall(r'<th scope="row">([^<]+)</th><td class="num">([^<]+)</td>', section[0]))
    assert figures == {
        "Scored as of": "2026-10-01 00:00 UTC",
        "Churn looked for within": "30 days",
        "Customers scored (paying then)": "1,800",
        "Of them, churned within the horizon": "64",
        "ROC AUC (0.5 is chance, 1.0 a perfect ranking)": "0.812",
        "Top 10% by score": "180 customers, 27 churned",
        "Precision of the top 10%": "15.0%",
        "Recall of the top 10%": "42.2%",
        "Churned JPY MRR caught by the top 10%": "JPY 0 of JPY 90,000 (0.0%)",
        "Churned USD MRR caught by the top 10%": "USD 1,250.00 of USD 2,500.00 (50.0%)",
    }


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

    assert f"{AT_RISK_TITLE}: 4 (top 1 shown)" in out
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

    assert "Customers: 8" in out
    assert "MRR: EUR 10.00 | JPY 30,000 | USD 280.00" in out
    ranked = [line.split()[2] for line in out.splitlines() if re.match(r"\s*\d+\s+\d+\s+cus_", line)]
    assert ranked == AT_RISK
    assert "        https://dashboard.stripe.com/customers/cus_failing" in out.splitlines()
    assert f"{CHURNED_TITLE}: 1" in out


@pytest.mark.postgres
@pytest.mark.parametrize("command", [[], ["--backtest"]], ids=["report", "backtest"])
def test_given_a_postgres_schema_without_the_perly_tables_then_report_and_backtest_say_run_a_sync(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    import psycopg

    dsn = postgres_dsn()
    schema = f"perly_empty_{uuid.uuid4().hex[:8]}"
    config = tmp_path / "destination.json"
    config.write_text(json.dumps({"store": store_settings(dsn, schema)}))
    try:
        assert main(["--config", str(config), *command]) == 2
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    captured = capsys.readouterr()
    assert captured.err.startswith("perly-report: ")
    assert "run a sync first" in captured.err
    assert captured.out == ""


def test_no_store_when_cli_runs_then_it_says_so_and_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "destination_perly.report", "--db", str(tmp_path / "missing.db")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "run a sync first" in result.stderr
    assert not (tmp_path / "missing.db").exists()  # read-only: the report never creates a store


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_the_report_into_a_pipe_whose_reader_has_gone_ends_quietly_and_still_writes_the_page(
    store: Path, tmp_path: Path, unbuffered: bool
) -> None:
    """`perly-report ... | head -3`: the reader closes the pipe before the report is printed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    page = tmp_path / "report.html"
    command = [sys.executable, "-m", "destination_perly.report", "--db", str(store), "--html", str(page)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        ended = subprocess.run(
            command, stdout=write_end, stderr=subprocess.PIPE, text=True, check=False, env=env
        )
    finally:
        os.close(write_end)
    assert (ended.returncode, ended.stderr) == (0, "")
    assert page.read_text(encoding="utf-8").rstrip().endswith("</html>")
