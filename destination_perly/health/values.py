"""Small pure helpers shared by the rules: reading Stripe fields defensively, time and exact money.

Money is carried as `Fraction` (exact rational arithmetic) until the one half-up rounding; Stripe's
decimal strings and float percentages go through `Decimal(str(...))` so no binary float error leaks in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Any

# Re-exported for the rules: an id reference is read as everywhere else (stripe_vocabulary).
from stripe_vocabulary import ref_id as ref_id

StripeObject = dict[str, Any]

DAY = timedelta(days=1)

# Decimals of a currency's minor unit, for display only (amounts stay integer minor units): Stripe's
# zero-decimal currencies count whole units, its three-decimal ones thousandths, all others cents.
ZERO_DECIMAL_CURRENCIES = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL_CURRENCIES = frozenset("bhd jod kwd omr tnd".split())


def as_dict(value: Any) -> StripeObject:
    """The value when it is a JSON object, else an empty one (missing or malformed sub-objects)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """A JSON list, or the `data` of a Stripe list object, else empty: the object's own list, never
    a copy (the rules only read it; copying was a tenth of the engine's calls)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        data = value.get("data")
        if isinstance(data, list):
            return data
    return []


def to_time(value: Any) -> datetime | None:
    """Stripe unix seconds (int, float or digit string) or a datetime -> aware UTC datetime."""
    if type(value) is int:  # nearly every call: first, before the checks for the other shapes
        return _from_unix(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        if not value.strip().lstrip("-").isdecimal():  # (isdigit takes "²", which int() refuses)
            return None
        value = int(value)
    if isinstance(value, int | float):
        return _from_unix(value)
    return None


@lru_cache(maxsize=1 << 16)
def _from_unix(value: int | float) -> datetime | None:
    # The same timestamps recur across a customer's objects and versions: convert each once.
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def whole_days(start: datetime, end: datetime) -> int:
    """Whole days from start to end, rounded down (negative when end is before start)."""
    return int((end - start) // DAY)


def exact(value: Any) -> Fraction | None:
    """A JSON number or decimal string as an exact Fraction; None when absent or malformed."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, str):
        return _exact_text(value)
    try:
        return Fraction(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


@lru_cache(maxsize=4096)
def _exact_text(value: str) -> Fraction | None:
    # Prices and tax rates repeat their decimal strings across items and versions: converted once each.
    try:
        return Fraction(Decimal(value))
    except (InvalidOperation, ValueError):
        return None


def round_half_up(value: Fraction) -> int:
    """Round to a whole minor unit, halves away from zero."""
    sign = -1 if value < 0 else 1
    magnitude = abs(value)
    whole, remainder = divmod(magnitude.numerator, magnitude.denominator)
    if 2 * remainder >= magnitude.denominator:
        whole += 1
    return sign * whole


def minor_unit_decimals(currency: str | None) -> int:
    """How many decimals the currency's minor unit has: 0 (jpy), 3 (kwd) or 2 (usd, and unknown)."""
    code = (currency or "").lower()
    return 0 if code in ZERO_DECIMAL_CURRENCIES else 3 if code in THREE_DECIMAL_CURRENCIES else 2


def format_money(amount: int, currency: str | None, *, signed: bool = False) -> str:
    """Minor units as the one display format of every amount Perly shows (terminal, HTML, reasons):
    123456 usd -> 'USD 1,234.56', 30000 jpy -> 'JPY 30,000', 1234 kwd -> 'KWD 1.234'.
    `signed` marks a change: gains get a '+' ('USD +22.50'), losses keep their '-'."""
    decimals = minor_unit_decimals(currency)
    major = Decimal(amount).scaleb(-decimals)
    sign = "+" if signed and amount > 0 else ""
    return f"{(currency or '').upper()} {sign}{major:,.{decimals}f}".strip()


def text(value: Any) -> str | None:
    """A string field, or None when absent or of another type (malformed input)."""
    return value if isinstance(value, str) else None


def currency_of(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None
