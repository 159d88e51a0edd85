"""Each provider's minor units against ISO 4217's: the tables and their conversions."""

from __future__ import annotations

from typing import get_args

import pytest
from dodopayments.types import Currency as DodoCurrency

from server.currencies import DODO, DODO_CURRENCIES, STRIPE, Unrepresentable, exponent, major


@pytest.mark.parametrize(("currency", "iso", "stripe"), [
    ("usd", 500, 500),  # $5.00: both count cents
    ("jpy", 500, 500),  # ¥500: both whole yen
    ("isk", 150_000, 15_000_000),  # 150,000 kr: ISO whole, Stripe hundredths (always 00)
    ("ugx", 5_000, 500_000),  # the same special case
    ("mga", 10_000_000, 100_000),  # 100,000.00 Ar: ISO two decimals, Stripe whole ariary
    ("kwd", 5_120, 5_120),  # 5.120 KD: three decimals at both, Stripe's ending in 0
    ("huf", 104_550, 104_550),  # forint charges keep two decimals (payouts are whole)
    ("twd", 80_045, 80_045),
])
def test_stripe_round_trips(currency: str, iso: int, stripe: int) -> None:
    assert STRIPE.to_provider(currency, iso) == stripe
    assert STRIPE.from_provider(currency, stripe) == iso
    assert STRIPE.to_provider(currency.upper(), iso) == stripe


@pytest.mark.parametrize(("currency", "amount", "why"), [
    ("mga", 12_345, "cannot charge 123.45 MGA: it takes MGA in whole units only"),
    ("kwd", 1_235, "cannot charge 1.235 KWD: it takes KWD in multiples of 0.010 KWD"),
    ("iqd", 5_000, "Stripe documents no minor units for IQD"),
])
def test_stripe_refuses_what_it_cannot_charge(currency: str, amount: int, why: str) -> None:
    with pytest.raises(Unrepresentable, match=why):
        STRIPE.to_provider(currency, amount)


def test_the_iso_steps_stripe_can_charge() -> None:
    assert [STRIPE.step(c) for c in ("usd", "isk", "mga", "kwd", "huf")] == [1, 1, 100, 10, 1]


def test_an_old_fractional_krona_is_dropped_or_counted_whole() -> None:
    # Stripe took fractions of ISK before April 2023: 10.50 kr read as 10, or 11 when a
    # refund or dispute is sized (never leaves credits for money given back).
    assert STRIPE.from_provider("isk", 1050) == 10
    assert STRIPE.from_provider("isk", 1050, up=True) == 11


def test_dodo_is_iso_for_the_currencies_its_sdk_lists() -> None:
    # Every currency we take, Dodo's SDK lists (a newer SDK may list more: until the table
    # takes them, their payments are kept for review, never credited by a guess).
    assert DODO_CURRENCIES.issubset(c.lower() for c in get_args(DodoCurrency))
    for currency in DODO_CURRENCIES:
        assert DODO.to_provider(currency, 1_230) == 1_230 == DODO.from_provider(currency, 1_230)
    assert DODO.units("kwd").decimals == 3 and DODO.units("jpy").decimals == 0
    with pytest.raises(Unrepresentable, match="Dodo Payments does not take ISK"):
        DODO.to_provider("isk", 100)


def test_iso_exponents() -> None:
    assert [exponent(c) for c in ("usd", "JPY", "isk", "kwd", "clf", "mga")] == [2, 0, 0, 3, 4, 2]
    assert [major(1234, c) for c in ("kwd", "usd", "jpy")] == ["1.234", "12.34", "1234"]
