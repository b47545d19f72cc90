"""The HTML report as a browser shows it: Debian's headless Chromium loads the page and we read the DOM
it built."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from destination_perly.report import main
from integration_tests.report_store import write_store

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1400",
]


def chromium(tmp_path: Path, *args: str) -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/ensure-system-deps.sh")
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.fixture
def page(tmp_path: Path) -> Path:
    html = tmp_path / "report.html"
    assert main(["--db", str(write_store(tmp_path / "perly.db")), "--html", str(html)]) == 0
    return html


def test_browser_renders_at_risk_rows_in_rank_order_with_flags(tmp_path: Path, page: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())

    rows = re.findall(r'<tr class="at-risk" data-customer="(\w+)">(.*?)</tr>', dom, re.S)
    assert [customer for customer, _ in rows] == ["cus_failing", "cus_shrinking"]
    assert re.findall(r'<span class="flag">([^<]+)</span>', rows[0][1]) == [
        "payment failures",
        "invoice aging",
    ]
    assert '<span id="at-risk-count">2</span>' in dom
    # Escaped customer text stays text in the DOM: no element was created from it.
    assert "&lt;b&gt;Shrink &amp; Co&lt;/b&gt;" in rows[1][1]


def test_browser_renders_one_mrr_chart_per_currency_with_its_bars(tmp_path: Path, page: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())

    charts = re.findall(r'<svg class="chart" data-currency="(\w+)".*?</svg>', dom, re.S)
    assert charts == ["jpy", "usd"]
    usd = re.search(r'<svg class="chart" data-currency="usd".*?</svg>', dom, re.S)
    assert usd is not None
    kinds = re.findall(r'<rect class="bar" data-kind="(\w+)"', usd.group(0))
    assert kinds == ["new", "contraction", "churn", "net"]
