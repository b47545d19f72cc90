"""perly-report: the churn-risk report, read from the Perly store.

Prints a summary (customers, MRR by currency, MRR movements of the period), the at-risk customers
(not churned, risk score above 0) ranked by risk score, and the customers who churned in the period
(win-back), as terminal tables; `--html FILE` also writes a self-contained page (inline CSS and SVG,
nothing fetched) with the same figures, an MRR-movement chart per currency and the backtest.

Ranking: by risk score, then by MRR at stake (the customer's MRR). Amounts in different currencies are
never compared: customers tied on score are grouped by currency code (alphabetically) and ordered by
MRR within their currency.

Text read from the store (names, emails, reasons) is shown with its control characters escaped
(as `\\x1b`), so a hostile name cannot drive the operator's terminal.

The report only reads: the SQLite store is opened read-only. Its "now" is the newest `as_of` in
`perly_customer_health` unless `--as-of` is given, so the same store always gives the same report.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Protocol
from urllib.parse import quote

import connector_spec
from destination_perly.backtest import BacktestUnavailable, run_backtest
from destination_perly.config import ConfigError, SqliteSettings, load_json_object, open_store, parse_config
from destination_perly.health import HealthConfig
from destination_perly.health.values import format_money
from destination_perly.store.base import Store, StoreError
from destination_perly.store.sqlite import SqliteStore

Row = dict[str, Any]
QueryFn = Callable[[str], list[Row]]

FLAGS = {
    "flag_payment_failures": "payment failures",
    "flag_downgrade": "downgrade",
    "flag_invoice_aging": "invoice aging",
    "flag_trial_expiring": "trial expiring",
    "flag_mrr_contraction": "MRR contraction",
}
# Order of the movement kinds in tables and charts: money in first, then money out.
MOVEMENT_KINDS = ("new", "reactivation", "expansion", "contraction", "churn")
# The two lists' names, written alike in the summary, over the lists and in the HTML, so that a count
# always names what it counts.
AT_RISK_TITLE = "At-risk customers (not churned, risk score above 0)"
CHURNED_TITLE = "Recently churned (win-back: churned in the period)"
# Each chart's axis spans at least this share of its currency's MRR either way from zero: a change
# that is small next to its currency's MRR stays a small bar, instead of filling its chart.
CHART_FLOOR_PERCENT = 10
DASHBOARD = "https://dashboard.stripe.com"


def dashboard_url(customer_id: str, livemode: bool | None) -> str | None:
    """The customer's page in the Stripe Dashboard (test-mode customers live under /test); None when
    the store does not say which mode the customer is in."""
    if livemode is None:
        return None
    return f"{DASHBOARD}{'' if livemode else '/test'}/customers/{quote(customer_id, safe='')}"


@dataclass(frozen=True)
class AtRiskCustomer:
    customer_id: str
    name: str | None
    email: str | None
    currency: str | None
    mrr: int
    risk_score: int
    subscription_health: str
    payment_risk: str
    flags: list[str]
    reasons: list[str]
    livemode: bool | None = None

    @property
    def dashboard_url(self) -> str | None:
        return dashboard_url(self.customer_id, self.livemode)


@dataclass(frozen=True)
class ChurnedCustomer:
    """A customer whose MRR went to 0 in the report's period and who is still churned."""

    customer_id: str
    name: str | None
    email: str | None
    churned_at: datetime
    currency: str
    mrr_lost: int  # minor units of `currency`: the MRR the churn took away
    churn_type: str | None  # involuntary, voluntary, unknown
    livemode: bool | None = None

    @property
    def dashboard_url(self) -> str | None:
        return dashboard_url(self.customer_id, self.livemode)


@dataclass(frozen=True)
class MovementTotal:
    currency: str
    kind: str
    count: int
    delta: int


class BacktestResult(Protocol):
    """What the report shows of a backtest (destination_perly.backtest's result): every customer scored
    as of a past date with only what was known then, against the churn (MRR to 0) of the following
    `horizon_days`. Rates are fractions (0.25 = 25%), None when the sample cannot give one; churned MRR
    is per currency, never summed across."""

    @property
    def as_of(self) -> datetime: ...
    @property
    def horizon_days(self) -> int: ...
    @property
    def customers(self) -> int: ...  # the population scored (paying at as_of)
    @property
    def churned(self) -> int: ...  # of them, MRR to 0 within the horizon
    @property
    def auc(self) -> float | None: ...  # ROC AUC of the score for that churn
    @property
    def top_decile(self) -> int: ...  # customers in the top 10% by score
    @property
    def top_decile_churned(self) -> int: ...
    @property
    def precision(self) -> float | None: ...  # churned share of the top decile
    @property
    def recall(self) -> float | None: ...  # share of the churned found in the top decile
    @property
    def churned_mrr_by_currency(self) -> dict[str, int]: ...
    @property
    def captured_mrr_by_currency(self) -> dict[str, int]: ...  # of it, in the top decile


@dataclass
class Report:
    as_of: datetime | None
    period_start: datetime | None
    customers: int
    health_counts: dict[str, int]
    mrr_by_currency: dict[str, int]
    movements: list[MovementTotal]
    at_risk: list[AtRiskCustomer] = field(default_factory=list)
    recently_churned: list[ChurnedCustomer] = field(default_factory=list)
    backtest: BacktestResult | None = None

    def net_change(self, currency: str) -> int:
        return sum(m.delta for m in self.movements if m.currency == currency)


# ---------------------------------------------------------------------------------------------------
# Reading rows (SQLite stores 0/1, ISO text and JSON text; PostgreSQL may give bool, datetime, jsonb)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes")
    return bool(value)


def _as_json(value: Any, default: Any) -> Any:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return json.loads(value)
    return value


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, int | float):
        result = datetime.fromtimestamp(value, UTC)
    else:
        result = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return result if result.tzinfo else result.replace(tzinfo=UTC)


# Unicode bidirectional overrides: they reorder what a terminal or a page shows ("Trojan source").
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def safe_text(value: object) -> str:
    """Text from the store made inert for display: control characters (ESC starts the ANSI and OSC
    sequences that clear a screen or retitle a window), DEL, C1 controls and bidi overrides are shown
    as escapes (`\\x1b`, `\\u202e`) instead of acting."""
    text = str(value)
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ch in _BIDI_CONTROLS or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F
        else ch
        for ch in text
    )


# ---------------------------------------------------------------------------------------------------
# Building the report (pure: rows in, report out)


def build_report(
    health_rows: Iterable[Row],
    movement_rows: Iterable[Row],
    as_of: datetime | None = None,
    period_start: datetime | None = None,
    period_days: int = 30,
    livemode: Mapping[str, bool] | None = None,
) -> Report:
    """Summarise health rows and movement rows for the period (period_start, as_of]. `livemode` maps
    customer ids to their Stripe mode (for Dashboard links); a customer missing from it gets no link."""
    livemode = livemode or {}
    customers = {str(r["customer_id"]): r for r in health_rows if not _as_bool(r.get("deleted"))}
    if as_of is None:
        stamps = [t for t in (_as_datetime(r.get("as_of")) for r in customers.values()) if t is not None]
        as_of = max(stamps, default=None)
    if period_start is None and as_of is not None:
        period_start = as_of - timedelta(days=period_days)

    health_counts: dict[str, int] = {}
    mrr_by_currency: dict[str, int] = {}
    at_risk: list[AtRiskCustomer] = []
    for customer_id, row in customers.items():
        state = str(row.get("subscription_health") or "none")
        health_counts[state] = health_counts.get(state, 0) + 1
        for currency, amount in _as_json(row.get("mrr_by_currency"), {}).items():
            mrr_by_currency[currency] = mrr_by_currency.get(currency, 0) + int(amount)
        score = int(row.get("risk_score") or 0)
        if state != "churned" and score > 0:
            at_risk.append(
                AtRiskCustomer(
                    customer_id=customer_id,
                    name=row.get("name"),
                    email=row.get("email"),
                    currency=row.get("currency"),
                    mrr=int(row.get("mrr") or 0),
                    risk_score=score,
                    subscription_health=state,
                    payment_risk=str(row.get("payment_risk") or "none"),
                    flags=[label for column, label in FLAGS.items() if _as_bool(row.get(column))],
                    reasons=[str(r) for r in _as_json(row.get("risk_reasons"), [])],
                    livemode=livemode.get(customer_id),
                )
            )
    # Score first; on a tie, the larger MRR at stake first, compared only within one currency.
    at_risk.sort(key=lambda c: (-c.risk_score, c.currency or "", -c.mrr, c.customer_id))

    totals: dict[tuple[str, str], list[int]] = {}
    last_churn: dict[str, tuple[datetime, Row]] = {}  # each customer's latest churn of the period
    for row in movement_rows:
        at = _as_datetime(row.get("at"))
        if at is None or (period_start is not None and at <= period_start) or (as_of and at > as_of):
            continue
        key = (str(row.get("currency") or ""), str(row.get("kind")))
        count_delta = totals.setdefault(key, [0, 0])
        count_delta[0] += 1
        count_delta[1] += int(row.get("delta") or 0)
        if row.get("kind") == "churn":
            seen = last_churn.get(str(row["customer_id"]))
            if seen is None or at >= seen[0]:
                last_churn[str(row["customer_id"])] = (at, row)
    order = {kind: i for i, kind in enumerate(MOVEMENT_KINDS)}
    movements = [
        MovementTotal(currency, kind, count, delta)
        for (currency, kind), (count, delta) in sorted(
            totals.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1])
        )
    ]
    recently_churned = [
        ChurnedCustomer(
            customer_id=customer_id,
            name=customers[customer_id].get("name"),
            email=customers[customer_id].get("email"),
            churned_at=at,
            currency=str(churn.get("currency") or ""),
            mrr_lost=-int(churn.get("delta") or 0),
            churn_type=churn.get("churn_type"),
            livemode=livemode.get(customer_id),
        )
        for customer_id, (at, churn) in last_churn.items()
        if customer_id in customers and customers[customer_id].get("subscription_health") == "churned"
    ]
    recently_churned.sort(key=lambda c: (c.currency, -c.mrr_lost, c.customer_id))
    return Report(
        as_of,
        period_start,
        len(customers),
        health_counts,
        mrr_by_currency,
        movements,
        at_risk,
        recently_churned,
    )


def read_report(
    query: QueryFn, as_of: datetime | None = None, period_start: datetime | None = None, period_days: int = 30
) -> Report:
    """Read the tables the report needs through `query(sql) -> rows as dicts`."""
    from destination_perly.store.base import table_for_stream

    health = query("SELECT * FROM perly_customer_health")
    movements = query("SELECT customer_id, at, kind, churn_type, currency, delta FROM perly_mrr_movements")
    try:  # the stored Stripe customer says its mode (the records are stored as compact JSON)
        modes = query(
            f"SELECT id, data LIKE '%\"livemode\":true%' AS live FROM {table_for_stream('customers')}"
        )
    except StoreUnavailable:  # a store without the customers stream: no Dashboard links
        modes = []
    livemode = {str(r["id"]): _as_bool(r["live"]) for r in modes}
    return build_report(health, movements, as_of, period_start, period_days, livemode)


# ---------------------------------------------------------------------------------------------------
# Figures both renderings show alike


def movement_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """The movement table of the period: per currency a row per kind, then its net change."""
    rows = []
    for currency in sorted({m.currency for m in report.movements}):
        for m in (m for m in report.movements if m.currency == currency):
            rows.append(
                (currency.upper(), m.kind, str(m.count), format_money(m.delta, currency, signed=True))
            )
        net = format_money(report.net_change(currency), currency, signed=True)
        rows.append((currency.upper(), "net", "", net))
    return rows


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.1%}"


def backtest_rows(result: BacktestResult) -> list[tuple[str, str]]:
    """The backtest's figures as (label, value) lines."""
    auc = "n/a (needs churned and retained customers)" if result.auc is None else f"{result.auc:.3f}"
    rows = [
        ("Scored as of", _when(result.as_of)),
        ("Churn looked for within", f"{result.horizon_days} days"),
        ("Customers scored (paying then)", f"{result.customers:,}"),
        ("Of them, churned within the horizon", f"{result.churned:,}"),
        ("ROC AUC (0.5 is chance, 1.0 a perfect ranking)", auc),
        ("Top 10% by score", f"{result.top_decile:,} customers, {result.top_decile_churned:,} churned"),
        ("Precision of the top 10%", _percent(result.precision)),
        ("Recall of the top 10%", _percent(result.recall)),
    ]
    for currency, total in sorted(result.churned_mrr_by_currency.items()):
        caught = result.captured_mrr_by_currency.get(currency, 0)
        share = _percent(caught / total if total else None)
        rows.append(
            (
                f"Churned {currency.upper()} MRR caught by the top 10%",
                f"{format_money(caught, currency)} of {format_money(total, currency)} ({share})",
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# Terminal rendering


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    headers = [safe_text(h) for h in headers]
    rows = [[safe_text(c) for c in row] for row in rows]  # escaped before measuring, so columns align
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _terminal(lines: Iterable[str]) -> str:
    """The lines as terminal text; nothing from the store can act on the terminal."""
    return "\n".join(safe_text(line) for line in lines)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def render_summary(report: Report) -> str:
    lines = [f"Perly churn-risk report, as of {_when(report.as_of)}"]
    if not report.customers:
        lines.append("The store holds no customers yet: run a sync first.")
        return _terminal(lines)
    states = ", ".join(f"{state} {n}" for state, n in sorted(report.health_counts.items()))
    lines.append(f"Customers: {report.customers} (by subscription health: {states})")
    lines.append(f"{AT_RISK_TITLE}: {len(report.at_risk)}")
    lines.append(f"{CHURNED_TITLE}: {len(report.recently_churned)}")
    mrr = " | ".join(format_money(a, c) for c, a in sorted(report.mrr_by_currency.items())) or "none"
    lines.append(f"MRR: {mrr}")
    lines.append(f"MRR movements from {_when(report.period_start)} to {_when(report.as_of)}:")
    rows = movement_rows(report)
    if not rows:
        lines.append("  none")
    else:
        lines += ["  " + x for x in _table(["currency", "kind", "count", "MRR change"], rows, right={2, 3})]
    return _terminal(lines)


def _shown_count(title: str, total: int, shown: int) -> str:
    return f"{title}: {total}" + (f" (top {shown} shown)" if shown < total else "")


def render_at_risk(report: Report, top: int | None = None) -> str:
    """The at-risk list, then the recently churned (win-back) list; `top` limits each."""
    shown = report.at_risk[:top] if top else report.at_risk
    lines = [_shown_count(AT_RISK_TITLE, len(report.at_risk), len(shown))]
    if shown:
        rows = [
            [
                str(rank),
                str(c.risk_score),
                c.customer_id,
                (c.name or c.email or "")[:28],
                format_money(c.mrr, c.currency),
                c.subscription_health,
                c.payment_risk,
                ", ".join(c.flags) or "-",
            ]
            for rank, c in enumerate(shown, 1)
        ]
        headers = ["#", "score", "customer", "name", "MRR", "health", "payment", "flags"]
        table = _table(headers, rows, {0, 1, 4})
        lines += table[:2]
        for line, customer in zip(table[2:], shown, strict=True):
            lines.append(line)
            lines += [f"        - {reason}" for reason in customer.reasons]
            if customer.dashboard_url:
                lines.append(f"        {customer.dashboard_url}")

    churned = report.recently_churned[:top] if top else report.recently_churned
    lines += ["", _shown_count(CHURNED_TITLE, len(report.recently_churned), len(churned))]
    if churned:
        rows = [
            [
                c.customer_id,
                (c.name or c.email or "")[:28],
                _when(c.churned_at),
                format_money(c.mrr_lost, c.currency),
                c.churn_type or "-",
                c.dashboard_url or "",
            ]
            for c in churned
        ]
        lines += _table(["customer", "name", "churned", "MRR lost", "type", "Stripe Dashboard"], rows, {3})
    return _terminal(lines)


# ---------------------------------------------------------------------------------------------------
# HTML rendering (self-contained: inline CSS and SVG)

KIND_COLOURS = {
    "new": "#2e7d32",
    "reactivation": "#66bb6a",
    "expansion": "#1e88e5",
    "contraction": "#fb8c00",
    "churn": "#e53935",
}


def _esc(value: object) -> str:
    return html.escape(safe_text(value))


def _grid_step(span: int) -> int:
    """About four gridlines over `span` minor units, at a 1, 2 or 5 x 10^k amount (round in major
    units too, since a currency's minor unit is a power of ten of its major one)."""
    step = 1
    while True:
        for multiple in (1, 2, 5):
            if step * multiple * 4 >= span:
                return step * multiple
        step *= 10


def chart_axis(report: Report, currency: str) -> list[int]:
    """The chart's gridline amounts (minor units, lowest first): they hold every bar and at least
    CHART_FLOOR_PERCENT of the currency's MRR either way from zero."""
    floor = abs(report.mrr_by_currency.get(currency, 0)) * CHART_FLOOR_PERCENT // 100
    deltas = [m.delta for m in report.movements if m.currency == currency] + [report.net_change(currency)]
    high = max([floor, *deltas])
    low = min([-floor, *deltas])
    step = _grid_step(max(high - low, 1))
    top, bottom = -(-high // step) * step, (low // step) * step
    return list(range(bottom, max(top, bottom + step) + 1, step))


def render_chart_svg(report: Report, currency: str) -> str:
    """One currency's MRR movements of the period: a bar per kind (gains up, losses down) and the net,
    on a labelled axis in that currency (see `chart_axis` for its extent)."""
    steps = [(m.kind, m.delta) for m in report.movements if m.currency == currency]
    bars = [(kind, delta, KIND_COLOURS.get(kind, "#9e9e9e")) for kind, delta in steps]
    bars.append(("net", report.net_change(currency), "#37474f"))
    ticks = chart_axis(report, currency)

    width, height, top, bottom, left, right = 960, 250, 16, 40, 120, 12
    span = ticks[-1] - ticks[0]

    def y(value: int) -> float:
        return top + (ticks[-1] - value) * (height - top - bottom) / span

    slot = (width - left - right) / len(bars)
    parts = [
        f'<svg class="chart" data-currency="{_esc(currency)}" viewBox="0 0 {width} {height}" '
        f'role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>MRR movements ({_esc(currency.upper())})</title>",
    ]
    for tick in ticks:
        parts.append(
            f'<line class="{"zero" if tick == 0 else "grid"}" x1="{left}" x2="{width - right}" '
            f'y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
            f'<text class="tick" data-amount="{tick}" x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">'
            f"{_esc(format_money(tick, currency, signed=True))}</text>"
        )
    for i, (label, amount, colour) in enumerate(bars):
        x = left + i * slot + slot * 0.2
        low, high = min(0, amount), max(0, amount)
        parts.append(
            f'<rect class="bar" data-kind="{_esc(label)}" data-amount="{amount}" x="{x:.1f}" '
            f'y="{y(high):.1f}" width="{slot * 0.6:.1f}" height="{max(y(low) - y(high), 1.0):.1f}" '
            f'fill="{colour}"><title>{_esc(label)}: {_esc(format_money(amount, currency, signed=True))}'
            "</title></rect>"
        )
        centre = x + slot * 0.3
        parts.append(f'<text x="{centre:.1f}" y="{height - 8}" text-anchor="middle">{_esc(label)}</text>')
        label_y = y(high) - 5 if amount >= 0 else y(low) + 13  # above a gain, below a loss
        parts.append(
            f'<text x="{centre:.1f}" y="{label_y:.1f}" text-anchor="middle" class="amount">'
            f"{_esc(format_money(amount, currency, signed=True))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _chart_figure(report: Report, currency: str) -> str:
    ticks = chart_axis(report, currency)
    code = currency.upper()
    return (
        f'<figure class="chart"><figcaption>{_esc(code)}: MRR '
        f"{_esc(format_money(report.mrr_by_currency.get(currency, 0), currency))}, net change "
        f"{_esc(format_money(report.net_change(currency), currency, signed=True))}"
        f'<small class="scale">Axis from {_esc(format_money(ticks[0], currency, signed=True))} to '
        f"{_esc(format_money(ticks[-1], currency, signed=True))}, a gridline every "
        f"{_esc(format_money(ticks[1] - ticks[0], currency))}.</small>"
        f"</figcaption>{render_chart_svg(report, currency)}</figure>"
    )


def _customer_cell(customer: AtRiskCustomer | ChurnedCustomer) -> str:
    """Name, email and id (linked to the Stripe Dashboard) in one cell that wraps anywhere."""
    url = customer.dashboard_url
    link = _esc(customer.customer_id)
    if url is not None:
        link = f'<a href="{_esc(url)}" rel="noopener noreferrer">{link}</a>'
    name, email = _esc(customer.name or ""), _esc(customer.email or "")
    return f'<td class="who">{name}<br><small>{email}<br>{link}</small></td>'


def _template() -> Template:
    text = resources.files("destination_perly").joinpath("templates/report.html").read_text(encoding="utf-8")
    return Template(text)


def render_html(report: Report) -> str:
    """The self-contained page: every list in full (the terminal's `--top` does not apply)."""
    esc = _esc
    charts = "".join(_chart_figure(report, c) for c in sorted({m.currency for m in report.movements}))
    mrr = "".join(f"<li>{esc(format_money(a, c))}</li>" for c, a in sorted(report.mrr_by_currency.items()))
    states = "".join(f"<li>{esc(s)}: {n}</li>" for s, n in sorted(report.health_counts.items()))
    table_rows = "".join(
        f'<tr class="{"net" if kind == "net" else "movement"}"><td>{esc(code)}</td><td>{esc(kind)}</td>'
        f'<td class="num">{count}</td><td class="num">{esc(amount)}</td></tr>'
        for code, kind, count, amount in movement_rows(report)
    )
    risk_rows = "".join(
        f'<tr class="at-risk" data-customer="{esc(c.customer_id)}"><td class="num">{rank}</td>'
        f'<td class="num score">{c.risk_score}</td>{_customer_cell(c)}'
        f'<td class="num">{esc(format_money(c.mrr, c.currency))}</td><td>{esc(c.subscription_health)}</td>'
        f"<td>{esc(c.payment_risk)}</td>"
        f"<td>{''.join(f'<span class=flag>{esc(f)}</span>' for f in c.flags)}</td>"
        f'<td class="reasons"><ul>{"".join(f"<li>{esc(r)}</li>" for r in c.reasons)}</ul></td></tr>'
        for rank, c in enumerate(report.at_risk, 1)
    )
    churned_rows = "".join(
        f'<tr class="churned" data-customer="{esc(c.customer_id)}">'
        f"{_customer_cell(c)}"
        f'<td>{esc(_when(c.churned_at))}</td><td class="num">{esc(format_money(c.mrr_lost, c.currency))}</td>'
        f"<td>{esc(c.churn_type or '-')}</td></tr>"
        for c in report.recently_churned
    )
    if report.backtest is None:
        backtest = (
            "<p>No backtest in this report. A backtest scores every customer as of a past date, with only "
            "what was known then, and measures how well the score ranked the churn that followed.</p>"
        )
    else:
        backtest = (
            '<table class="figures"><tbody>'
            + "".join(
                f'<tr><th scope="row">{esc(label)}</th><td class="num">{esc(value)}</td></tr>'
                for label, value in backtest_rows(report.backtest)
            )
            + "</tbody></table>"
        )
    return _template().substitute(
        as_of=esc(_when(report.as_of)),
        period_start=esc(_when(report.period_start)),
        customers=report.customers,
        states=states,
        at_risk_title=esc(AT_RISK_TITLE),
        at_risk_count=len(report.at_risk),
        churned_title=esc(CHURNED_TITLE),
        churned_count=len(report.recently_churned),
        mrr=mrr or "<li>none</li>",
        chart_floor=CHART_FLOOR_PERCENT,
        charts=charts or "<p>No MRR movements in this period.</p>",
        movement_rows=table_rows or '<tr><td colspan="4">none</td></tr>',
        risk_rows=risk_rows or '<tr><td colspan="8">No customer at risk.</td></tr>',
        churned_rows=churned_rows or '<tr><td colspan="4">No customer churned in this period.</td></tr>',
        backtest=backtest,
    )


# ---------------------------------------------------------------------------------------------------
# Opening the store


class StoreUnavailable(Exception):
    """The store cannot be read (missing file, no Perly tables, connection refused)."""

    exit_code = 2


class StoreUnreadable(StoreUnavailable):
    """The store is there but cannot be read: corrupt, truncated, or not permitted."""

    exit_code = 3


def _sqlite_problem(db: Path, exc: sqlite3.Error) -> StoreUnavailable:
    """What went wrong reading the SQLite file, said so that the user knows what to do."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return StoreUnreadable(
            f"{db} is truncated or corrupt, not a readable SQLite store ({exc}). Restore it from a backup, "
            "or move it aside and run a full sync to rebuild it from Stripe."
        )
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
        if not os.access(db.parent, os.W_OK):
            # Readers of a WAL store, even read-only ones, create and write `<db>-shm` beside it.
            return StoreUnreadable(
                f"cannot read {db} ({exc}): {db.parent} is not writable by this user, and SQLite must "
                f"create {db.name}-shm there to read a WAL store, even read-only. Run the report as a user "
                f"who can write to {db.parent}, or copy {db.name} with its -wal file to a writable directory."
            )
        if not os.access(db, os.R_OK):
            return StoreUnreadable(f"cannot open {db} ({exc}): this user may not read it.")
    if "no such table" in str(exc):
        return StoreUnavailable(f"{db} is not a Perly store yet ({exc}): run a sync first")
    return StoreUnreadable(f"cannot read {db} ({exc})")


DEFAULT_DB = "var/perly.db"


@dataclass
class ReportStore:
    """A Perly store opened for reading by the report and the backtest. A failed read raises
    StoreUnavailable saying what to do (StoreUnreadable for a corrupt or unreadable store), never a
    driver's error."""

    store: Store
    health: HealthConfig  # the settings to score with: the config's, else the defaults

    @contextmanager
    def reading(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            problem = _read_problem(self.store, exc)
            if problem is None:  # not the store's error: a bug, shown as one
                raise
            raise problem from exc

    def query(self, sql: str) -> list[Row]:
        with self.reading():
            return self.store.query(sql)

    def backtest(self, as_of: datetime | None, horizon_days: int) -> BacktestResult:
        with self.reading():
            return run_backtest(self.store, as_of, horizon_days, self.health)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ReportStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _read_problem(store: Store, exc: Exception) -> StoreUnavailable | None:
    if isinstance(exc, sqlite3.Error) and isinstance(store, SqliteStore):
        return _sqlite_problem(store.path, exc)
    if not isinstance(store, SqliteStore):
        import psycopg  # already loaded: the store is a PostgreSQL one

        if isinstance(exc, psycopg.Error):  # a missing table reads differently on each backend
            return StoreUnavailable(f"cannot read the Perly tables ({type(exc).__name__}): run a sync first")
    return None


def open_report_store(config: Mapping[str, Any] | None = None, db: str | Path | None = None) -> ReportStore:
    """The store a destination config names (else the SQLite file `db`, default var/perly.db), opened
    for reading: a SQLite file read-only, never created. Raises StoreUnavailable: its messages never
    quote a secret."""
    health = HealthConfig()
    path = Path(db or DEFAULT_DB)
    try:
        if config is not None:
            parsed = parse_config(dict(config))
            if not isinstance(parsed.store, SqliteSettings):
                return ReportStore(open_store(parsed.store), parsed.health)
            path, health = Path(parsed.store.path), parsed.health
        if not path.is_file():
            raise StoreUnavailable(f"no SQLite store at {path}: run a sync first")
        return ReportStore(SqliteStore(path, read_only=True), health)
    except ConfigError as exc:
        raise StoreUnavailable(str(exc)) from exc
    except StoreError as exc:
        if isinstance(exc.__cause__, sqlite3.Error):  # SQLite read the file's header when opening it
            raise _sqlite_problem(path, exc.__cause__) from exc
        raise StoreUnavailable(str(exc)) from exc


# ---------------------------------------------------------------------------------------------------
# Command line


def _parse_time(text: str) -> datetime:
    try:
        parsed = _as_datetime(text)
    except ValueError:
        parsed = None
    if parsed is None:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-01T00:00:00Z)")
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _report(argv)
        sys.stdout.flush()  # a buffered stdout meets the closed pipe here, not in Python's exit
        return status
    except BrokenPipeError:  # the reader stopped early (`| head`); the HTML page is written already
        connector_spec.silence_closed_stdout()
        return 0


def _report(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="perly-report",
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 report printed; 2 no store or no sync yet (or bad arguments); "
        "3 the store is there but cannot be read (corrupt, truncated, permissions).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", help="SQLite store file (default: var/perly.db)")
    where.add_argument("--config", help="the destination's config JSON (its `store` section is used)")
    parser.add_argument("--html", metavar="FILE", help="also write the report as a self-contained HTML page")
    parser.add_argument(
        "--top",
        type=int,
        default=20,
        help="customers per list in the terminal (0: all; default 20); the HTML lists all",
    )
    parser.add_argument("--as-of", type=_parse_time, help="report time (default: newest as_of in the store)")
    parser.add_argument(
        "--since", type=_parse_time, help="start of the movements period (default: as-of - days)"
    )
    parser.add_argument("--days", type=int, default=30, help="length of the movements period (default 30)")
    parser.add_argument(
        "--backtest",
        action="store_true",
        help="score every customer as of --as-of (default: newest data - horizon) with what was known "
        "then, and compare with the churn that followed",
    )
    parser.add_argument("--horizon-days", type=int, default=30, help="backtest horizon (default 30)")
    args = parser.parse_args(argv)
    try:
        config = None if args.config is None else load_json_object(args.config)
        with open_report_store(config, args.db) as opened:
            if args.backtest:
                return _print_backtest(opened, args.as_of, args.horizon_days)
            report = read_report(opened.query, args.as_of, args.since, args.days)
            if args.html:
                report.backtest = default_backtest(opened, args.horizon_days)
    except (ConfigError, StoreUnavailable) as exc:
        print(f"perly-report: {safe_text(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, StoreUnavailable) else 2
    if args.html:  # before printing: a reader that stops early (`| head`) must not lose the page
        from destination_perly.private_files import write_private

        write_private(Path(args.html), render_html(report).encode())  # names and emails: owner-only
    print(render_summary(report))
    print()
    print(render_at_risk(report, args.top or None))
    if args.html:
        print(f"\nHTML report written to {args.html}")
    return 0


def default_backtest(opened: ReportStore, horizon_days: int = 30) -> BacktestResult | None:
    """The backtest the HTML page shows: as of the newest data less the horizon, or None when the
    store cannot give one yet (the page then says what a backtest is)."""
    try:
        return opened.backtest(None, horizon_days)
    except BacktestUnavailable:
        return None


def _print_backtest(opened: ReportStore, as_of: datetime | None, horizon_days: int) -> int:
    try:
        result = opened.backtest(as_of, horizon_days)
    except BacktestUnavailable as exc:
        print(f"perly-report: {safe_text(exc)}", file=sys.stderr)
        return 2
    print("Backtest of the risk score: how well it would have warned of the churn that followed")
    for label, value in backtest_rows(result):
        print(f"  {label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
