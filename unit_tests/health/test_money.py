"""The one money format of every amount Perly shows: terminal, HTML and risk reasons."""

from __future__ import annotations

import pytest

from destination_perly.health.values import format_money


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (123456, "usd", "USD 1,234.56"),
        (-7000, "eur", "EUR -70.00"),
        (5, "gbp", "GBP 0.05"),
        (30000, "jpy", "JPY 30,000"),  # zero-decimal: the minor unit is the yen, never / 100
        (337000, "JPY", "JPY 337,000"),  # codes in either case
        (150000, "xof", "XOF 150,000"),
        (-2500, "krw", "KRW -2,500"),
        (1234, "kwd", "KWD 1.234"),  # three-decimal: 1234 fils are 1.234 dinars, not 12.34
        (1500, "bhd", "BHD 1.500"),
        (99, "tnd", "TND 0.099"),
        (1234567, "omr", "OMR 1,234.567"),
        (123456, None, "1,234.56"),  # no currency known: still two decimals, no code
    ],
    ids=lambda value: str(value),
)
def test_money_is_shown_in_major_units_of_its_currency(amount: int, currency: str | None, shown: str) -> None:
    assert format_money(amount, currency) == shown


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (2250, "eur", "EUR +22.50"),
        (-345790, "eur", "EUR -3,457.90"),
        (0, "usd", "USD 0.00"),
        (7, "jod", "JOD +0.007"),
    ],
    ids=["gain", "loss", "zero", "three-decimal"],
)
def test_a_change_is_shown_with_its_sign(amount: int, currency: str, shown: str) -> None:
    assert format_money(amount, currency, signed=True) == shown
