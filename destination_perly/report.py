"""perly-report: the churn-risk report, read from the Perly store.

Prints a summary (customers, MRR by currency, MRR movements of the period) and the at-risk customers
ranked by risk score, as a terminal table; `--html FILE` also writes a self-contained page (inline CSS
and SVG, nothing fetched) with an MRR-movement chart per currency and the at-risk list.

The report only reads: the SQLite store is opened read-only. Its "now" is the newest `as_of` in
`perly_customer_health` unless `--as-of` is given, so the same store always gives the same report.
"""

from __future__ import annotations

import argparse
import html
import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from destination_perly.backtest import BacktestUnavailable, render_backtest, run_backtest
from destination_perly.health import HealthConfig
from destination_perly.store.base import Store

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
# Stripe's zero-decimal and three-decimal currencies; every other currency has two decimals.
ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
ZERO_DECIMAL |= {"xaf", "xof", "xpf"}
THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}


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


@dataclass(frozen=True)
class MovementTotal:
    currency: str
    kind: str
    count: int
    delta: int


@dataclass
class Report:
    as_of: datetime | None
    period_start: datetime | None
    customers: int
    health_counts: dict[str, int]
    mrr_by_currency: dict[str, int]
    movements: list[MovementTotal]
    at_risk: list[AtRiskCustomer] = field(default_factory=list)

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


def format_money(amount: int, currency: str | None) -> str:
    """An integer amount in minor units, shown in major units: 123456 usd -> 'USD 1,234.56'."""
    code = (currency or "").lower()
    decimals = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    major = Decimal(amount).scaleb(-decimals)
    return f"{code.upper()} {major:,.{decimals}f}".strip()


# ---------------------------------------------------------------------------------------------------
# Building the report (pure: rows in, report out)


def build_report(
    health_rows: Iterable[Row],
    movement_rows: Iterable[Row],
    as_of: datetime | None = None,
    period_start: datetime | None = None,
    period_days: int = 30,
) -> Report:
    """Summarise health rows and movement rows for the period (period_start, as_of]."""
    customers = [r for r in health_rows if not _as_bool(r.get("deleted"))]
    if as_of is None:
        stamps = [t for t in (_as_datetime(r.get("as_of")) for r in customers) if t is not None]
        as_of = max(stamps, default=None)
    if period_start is None and as_of is not None:
        period_start = as_of - timedelta(days=period_days)

    health_counts: dict[str, int] = {}
    mrr_by_currency: dict[str, int] = {}
    at_risk: list[AtRiskCustomer] = []
    for row in customers:
        state = str(row.get("subscription_health") or "none")
        health_counts[state] = health_counts.get(state, 0) + 1
        for currency, amount in _as_json(row.get("mrr_by_currency"), {}).items():
            mrr_by_currency[currency] = mrr_by_currency.get(currency, 0) + int(amount)
        flags = [label for column, label in FLAGS.items() if _as_bool(row.get(column))]
        score = int(row.get("risk_score") or 0)
        if flags or score > 0:
            at_risk.append(
                AtRiskCustomer(
                    customer_id=str(row["customer_id"]),
                    name=row.get("name"),
                    email=row.get("email"),
                    currency=row.get("currency"),
                    mrr=int(row.get("mrr") or 0),
                    risk_score=score,
                    subscription_health=state,
                    payment_risk=str(row.get("payment_risk") or "none"),
                    flags=flags,
                    reasons=[str(r) for r in _as_json(row.get("risk_reasons"), [])],
                )
            )
    at_risk.sort(key=lambda c: (-c.risk_score, -c.mrr, c.customer_id))

    totals: dict[tuple[str, str], list[int]] = {}
    for row in movement_rows:
        at = _as_datetime(row.get("at"))
        if at is None or (period_start is not None and at <= period_start) or (as_of and at > as_of):
            continue
        key = (str(row.get("currency") or ""), str(row.get("kind")))
        count_delta = totals.setdefault(key, [0, 0])
        count_delta[0] += 1
        count_delta[1] += int(row.get("delta") or 0)
    order = {kind: i for i, kind in enumerate(MOVEMENT_KINDS)}
    movements = [
        MovementTotal(currency, kind, count, delta)
        for (currency, kind), (count, delta) in sorted(
            totals.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1])
        )
    ]
    return Report(as_of, period_start, len(customers), health_counts, mrr_by_currency, movements, at_risk)


def read_report(
    query: QueryFn, as_of: datetime | None = None, period_start: datetime | None = None, period_days: int = 30
) -> Report:
    """Read the two tables the report needs through `query(sql) -> rows as dicts`."""
    health = query("SELECT * FROM perly_customer_health")
    movements = query("SELECT customer_id, at, kind, currency, delta FROM perly_mrr_movements")
    return build_report(health, movements, as_of, period_start, period_days)


# ---------------------------------------------------------------------------------------------------
# Terminal rendering


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def render_summary(report: Report) -> str:
    lines = [f"Perly churn-risk report, as of {_when(report.as_of)}"]
    if not report.customers:
        lines.append("The store holds no customers yet: run a sync first.")
        return "\n".join(lines)
    states = ", ".join(f"{state} {n}" for state, n in sorted(report.health_counts.items()))
    lines.append(f"Customers: {report.customers} ({states})")
    mrr = " | ".join(format_money(a, c) for c, a in sorted(report.mrr_by_currency.items())) or "none"
    lines.append(f"MRR: {mrr}")
    lines.append(f"MRR movements from {_when(report.period_start)} to {_when(report.as_of)}:")
    if not report.movements:
        lines.append("  none")
    else:
        rows = []
        for currency in sorted({m.currency for m in report.movements}):
            for m in (m for m in report.movements if m.currency == currency):
                rows.append([currency.upper(), m.kind, str(m.count), format_money(m.delta, currency)])
            rows.append([currency.upper(), "net", "", format_money(report.net_change(currency), currency)])
        lines += ["  " + x for x in _table(["currency", "kind", "count", "MRR change"], rows, right={2, 3})]
    return "\n".join(lines)


def render_at_risk(report: Report, top: int | None = None) -> str:
    shown = report.at_risk[:top] if top else report.at_risk
    more = len(report.at_risk) - len(shown)
    lines = [f"At-risk customers: {len(report.at_risk)}" + (f" (top {len(shown)} shown)" if more else "")]
    if not shown:
        return "\n".join(lines)
    rows = []
    for rank, c in enumerate(shown, 1):
        who = c.name or c.email or ""
        rows.append(
            [
                str(rank),
                str(c.risk_score),
                c.customer_id,
                who[:28],
                format_money(c.mrr, c.currency),
                c.subscription_health,
                c.payment_risk,
                ", ".join(c.flags) or "-",
            ]
        )
    table = _table(["#", "score", "customer", "name", "MRR", "health", "payment", "flags"], rows, {0, 1, 4})
    lines += table[:2]
    for line, customer in zip(table[2:], shown, strict=True):
        lines.append(line)
        lines += [f"        - {reason}" for reason in customer.reasons]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# HTML rendering (self-contained: inline CSS and SVG)

KIND_COLOURS = {
    "new": "#2e7d32",
    "reactivation": "#66bb6a",
    "expansion": "#1e88e5",
    "contraction": "#fb8c00",
    "churn": "#e53935",
}


def render_chart_svg(report: Report, currency: str) -> str:
    """One currency's MRR movements of the period: a bar per kind (gains up, losses down) and the net.

    Bars start at zero, so a small month is still readable next to a large MRR (which the caption
    gives with the net change)."""
    steps = [(m.kind, m.delta) for m in report.movements if m.currency == currency]
    # Each bar: label, low end, high end, colour, the signed amount it stands for.
    bars: list[tuple[str, int, int, str, int]] = [
        (kind, min(0, delta), max(0, delta), KIND_COLOURS.get(kind, "#9e9e9e"), delta)
        for kind, delta in steps
    ]
    net = report.net_change(currency)
    bars.append(("net", min(0, net), max(0, net), "#37474f", net))

    width, height, top, bottom, left = 520, 240, 20, 44, 16
    top_value = max([0, *(bar[2] for bar in bars)])
    low_value = min([0, *(bar[1] for bar in bars)])
    span = (top_value - low_value) or 1

    def y(value: int) -> float:
        return top + (top_value - value) * (height - top - bottom) / span

    slot = (width - 2 * left) / len(bars)
    parts = [
        f'<svg class="chart" data-currency="{html.escape(currency)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>MRR movements ({html.escape(currency.upper())})</title>",
        f'<line x1="{left}" x2="{width - left}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#90a4ae"/>',
    ]
    for i, (label, low, high, colour, amount) in enumerate(bars):
        x = left + i * slot + slot * 0.15
        bar_height = max(y(low) - y(high), 1.0)
        parts.append(
            f'<rect class="bar" data-kind="{html.escape(label)}" data-amount="{amount}" x="{x:.1f}" '
            f'y="{y(high):.1f}" width="{slot * 0.7:.1f}" height="{bar_height:.1f}" fill="{colour}">'
            f"<title>{html.escape(label)}: {html.escape(format_money(amount, currency))}</title></rect>"
        )
        parts.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{height - 10}" text-anchor="middle">'
            f"{html.escape(label)}</text>"
        )
        label_y = y(high) - 4 if amount >= 0 else y(low) + 12  # above a gain, below a loss
        parts.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{label_y:.1f}" text-anchor="middle" class="amount">'
            f"{html.escape(format_money(amount, currency).split(' ', 1)[-1])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _template() -> Template:
    text = resources.files("destination_perly").joinpath("templates/report.html").read_text(encoding="utf-8")
    return Template(text)


def render_html(report: Report, top: int | None = None) -> str:
    esc = html.escape
    currencies = sorted(set(report.mrr_by_currency) | {m.currency for m in report.movements})
    charts = "".join(
        f"<figure><figcaption>{esc(c.upper())}: MRR {esc(format_money(report.mrr_by_currency.get(c, 0), c))},"
        f" net change {esc(format_money(report.net_change(c), c))}</figcaption>"
        f"{render_chart_svg(report, c)}</figure>"
        for c in currencies
    )
    mrr = "".join(f"<li>{esc(format_money(a, c))}</li>" for c, a in sorted(report.mrr_by_currency.items()))
    states = "".join(f"<li>{esc(s)}: {n}</li>" for s, n in sorted(report.health_counts.items()))
    movement_rows = "".join(
        f'<tr><td>{esc(m.currency.upper())}</td><td>{esc(m.kind)}</td><td class="num">{m.count}</td>'
        f'<td class="num">{esc(format_money(m.delta, m.currency))}</td></tr>'
        for m in report.movements
    )
    shown = report.at_risk[:top] if top else report.at_risk
    risk_rows = "".join(
        f'<tr class="at-risk" data-customer="{esc(c.customer_id)}"><td class="num">{rank}</td>'
        f'<td class="num score">{c.risk_score}</td><td>{esc(c.customer_id)}</td>'
        f"<td>{esc(c.name or '')}<br><small>{esc(c.email or '')}</small></td>"
        f'<td class="num">{esc(format_money(c.mrr, c.currency))}</td><td>{esc(c.subscription_health)}</td>'
        f"<td>{esc(c.payment_risk)}</td>"
        f"<td>{''.join(f'<span class=flag>{esc(f)}</span>' for f in c.flags)}</td>"
        f"<td><ul>{''.join(f'<li>{esc(r)}</li>' for r in c.reasons)}</ul></td></tr>"
        for rank, c in enumerate(shown, 1)
    )
    return _template().substitute(
        as_of=esc(_when(report.as_of)),
        period_start=esc(_when(report.period_start)),
        customers=report.customers,
        states=states,
        mrr=mrr or "<li>none</li>",
        charts=charts or "<p>No MRR and no movements in this period.</p>",
        movement_rows=movement_rows or '<tr><td colspan="4">none</td></tr>',
        at_risk_count=len(report.at_risk),
        risk_rows=risk_rows or '<tr><td colspan="9">No customer at risk.</td></tr>',
    )


# ---------------------------------------------------------------------------------------------------
# Opening the store


class StoreUnavailable(Exception):
    """The store cannot be read (missing file, no Perly tables, connection refused)."""


def sqlite_query(path: str | Path) -> QueryFn:
    """A read-only query function over a SQLite store file."""
    db = Path(path)
    if not db.is_file():
        raise StoreUnavailable(f"no SQLite store at {db}: run a sync first")
    connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row

    def query(sql: str) -> list[Row]:
        try:
            return [dict(row) for row in connection.execute(sql)]
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"{db} is not a Perly store yet ({exc}): run a sync first") from exc

    return query


def query_for_config(raw_config: dict[str, Any]) -> QueryFn:
    """A query function over the store the destination's config names (SQLite is opened read-only)."""
    from destination_perly.config import ConfigError, SqliteSettings, open_store, parse_config
    from destination_perly.store import StoreError

    try:
        settings = parse_config(raw_config).store
        if isinstance(settings, SqliteSettings):
            return sqlite_query(settings.path)
        store = open_store(settings)
    except (ConfigError, StoreError) as exc:  # their messages never quote a secret
        raise StoreUnavailable(str(exc)) from exc

    def query(sql: str) -> list[Row]:
        try:
            return store.query(sql)
        except Exception as exc:  # a missing table reads differently on each backend
            raise StoreUnavailable(
                f"cannot read the Perly tables ({type(exc).__name__}): run a sync first"
            ) from exc

    return query


# ---------------------------------------------------------------------------------------------------
# Command line


def open_store_for(db: str | None, config_path: str | None) -> tuple[Store, HealthConfig]:
    """The store the command line names (`--config` or `--db`) and the health settings to score with
    (the config's, else the defaults), for the backtest; a missing SQLite file is an error, never
    created."""
    from destination_perly.config import ConfigError, SqliteSettings, open_store, parse_config
    from destination_perly.store import StoreError

    try:
        health = HealthConfig()
        if config_path:
            parsed = parse_config(json.loads(Path(config_path).read_text(encoding="utf-8")))
            settings, health = parsed.store, parsed.health
        else:
            settings = SqliteSettings(path=db or "var/perly.db")
        if isinstance(settings, SqliteSettings) and not Path(settings.path).is_file():
            raise StoreUnavailable(f"no SQLite store at {settings.path}: run a sync first")
        return open_store(settings), health
    except (ConfigError, StoreError) as exc:  # their messages never quote a secret
        raise StoreUnavailable(str(exc)) from exc


def _parse_time(text: str) -> datetime:
    try:
        parsed = _as_datetime(text)
    except ValueError:
        parsed = None
    if parsed is None:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-01T00:00:00Z)")
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perly-report", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", help="SQLite store file (default: var/perly.db)")
    where.add_argument("--config", help="the destination's config JSON (its `store` section is used)")
    parser.add_argument("--html", metavar="FILE", help="also write the report as a self-contained HTML page")
    parser.add_argument("--top", type=int, default=20, help="at-risk customers to show (0: all; default 20)")
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
    if args.backtest:
        return _print_backtest(args)

    try:
        if args.config:
            query = query_for_config(json.loads(Path(args.config).read_text(encoding="utf-8")))
        else:
            query = sqlite_query(args.db or "var/perly.db")
        report = read_report(query, args.as_of, args.since, args.days)
    except StoreUnavailable as exc:
        print(f"perly-report: {exc}", file=sys.stderr)
        return 2
    print(render_summary(report))
    print()
    print(render_at_risk(report, args.top or None))
    if args.html:
        Path(args.html).write_text(render_html(report, args.top or None), encoding="utf-8")
        print(f"\nHTML report written to {args.html}")
    return 0


def _print_backtest(args: argparse.Namespace) -> int:
    try:
        store, health = open_store_for(args.db, args.config)
        try:
            result = run_backtest(store, args.as_of, args.horizon_days, health)
        finally:
            store.close()
    except (StoreUnavailable, BacktestUnavailable) as exc:
        print(f"perly-report: {exc}", file=sys.stderr)
        return 2
    print(render_backtest(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
