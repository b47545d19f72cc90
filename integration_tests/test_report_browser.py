"""The HTML report as a manager's browser shows it: Debian's headless Chromium loads the page at 1100 px
wide, and we read the DOM it built (and what it measured), and keep a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from destination_perly.report import main
from integration_tests.report_store import AT_RISK, CUSTOMERS, customer, write_store

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1100
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    f"--window-size={WIDTH},1400",
]
# Where the screenshot is kept for a person to look at (var/ is the repository's ignored work area).
ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts"
# A customer whose name and email have no place to break: they must wrap, never widen the page.
UNBROKEN = customer(
    "cus_unbroken",
    name="Averyveryverylongcompanynamewithoutanyspaces" * 3,
    email="billing-department-" + "x" * 120 + "@example.com",
    mrr=4500,
    mrr_by_currency={"usd": 4500},
    risk_score=10,
    risk_reasons=["trial ends on 2026-11-10 without a payment method"],
)
LISTED = [*AT_RISK, "cus_unbroken"]


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
    store = write_store(tmp_path / "perly.db", [*CUSTOMERS, UNBROKEN])
    assert main(["--db", str(store), "--html", str(html)]) == 0
    return html


def measured(tmp_path: Path, page: Path) -> str:
    """The DOM after layout, with the page's widths written onto <body> by a probe script that only
    this test's copy of the page carries (the report itself has no script)."""
    probe = tmp_path / "probe.html"
    script = (
        "<script>const d = document.documentElement;"
        "document.body.dataset.scrollWidth = d.scrollWidth;"
        "document.body.dataset.clientWidth = d.clientWidth;"
        "</script></body>"
    )
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    return chromium(tmp_path, "--dump-dom", probe.as_uri())


def test_browser_renders_at_risk_rows_in_rank_order_with_flags_and_dashboard_links(
    tmp_path: Path, page: Path
) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())

    rows = re.findall(r'<tr class="at-risk" data-customer="(\w+)">(.*?)</tr>', dom, re.S)
    assert [customer for customer, _ in rows] == LISTED
    assert re.findall(r'<span class="flag">([^<]+)</span>', rows[0][1]) == [
        "payment failures",
        "invoice aging",
    ]
    assert 'href="https://dashboard.stripe.com/customers/cus_failing"' in rows[0][1]
    assert 'href="https://dashboard.stripe.com/test/customers/cus_paris"' in rows[1][1]
    # Escaped customer text stays text in the DOM: no element was created from it.
    assert "&lt;b&gt;Shrink &amp; Co&lt;/b&gt;" in rows[3][1]


def test_browser_shows_the_same_counts_in_the_summary_the_lists_and_every_section(
    tmp_path: Path, page: Path
) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())

    sections = re.findall(r'<section[^>]* id="([\w-]+)"', dom)
    assert sections == ["summary", "movements", "at-risk", "recently-churned", "backtest"]
    assert '<div class="count" id="summary-at-risk-count">5</div>' in dom
    assert '<span id="at-risk-count">5</span>' in dom
    assert dom.count('<tr class="at-risk"') == 5
    assert '<div class="count" id="summary-churned-count">1</div>' in dom
    assert '<span id="churned-count">1</span>' in dom
    assert re.findall(r'<tr class="churned" data-customer="(\w+)"', dom) == ["cus_lost"]


def test_browser_renders_one_mrr_chart_per_currency_with_its_bars_and_axis(
    tmp_path: Path, page: Path
) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())

    charts = re.findall(r'<svg class="chart" data-currency="(\w+)".*?</svg>', dom, re.S)
    assert charts == ["jpy", "usd"]  # EUR has MRR but no movement in the period
    usd = re.search(r'<svg class="chart" data-currency="usd".*?</svg>', dom, re.S)
    assert usd is not None
    kinds = re.findall(r'<rect class="bar" data-kind="(\w+)"', usd.group(0))
    assert kinds == ["new", "contraction", "churn", "net"]
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', usd.group(0))
    assert len(ticks) >= 3
    assert all(tick.startswith("USD ") for tick in ticks)


def test_at_1100_px_the_page_needs_no_horizontal_scrolling_and_a_screenshot_is_kept(
    tmp_path: Path, page: Path
) -> None:
    dom = measured(tmp_path, page)
    widths = re.search(r'<body data-scroll-width="(\d+)" data-client-width="(\d+)"', dom)
    assert widths is not None, dom[:500]
    scroll_width, client_width = int(widths[1]), int(widths[2])
    assert client_width == WIDTH
    assert scroll_width <= client_width

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-1100px.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},2600", page.as_uri())
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == WIDTH  # IHDR: the image is the page at 1100 px
    print(f"\nscreenshot of the HTML report at {WIDTH} px: {shot}")
