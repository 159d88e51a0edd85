"""Minor units: ISO 4217's, which the catalog prices in, and each payment provider's.

A provider's API counts some currencies otherwise than ISO 4217 does (Stripe: ISK in
hundredths that must be 00, MGA in whole ariary). Every amount that crosses to or from a
provider goes through that provider's table here, `to_provider` on the way out and
`from_provider` on the way in, so the catalog and the ledger only ever see ISO minor units.
An amount a provider cannot take is refused (Unrepresentable), never rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

# ISO 4217 minor-unit exponents that are not 2 (everything else has cents).
_ISO = {
    **dict.fromkeys(("bif", "clp", "djf", "gnf", "isk", "jpy", "kmf", "krw", "pyg", "rwf",
                     "ugx", "uyi", "vnd", "vuv", "xaf", "xof", "xpf"), 0),
    **dict.fromkeys(("bhd", "iqd", "jod", "kwd", "lyd", "omr", "tnd"), 3),
    "clf": 4, "uyw": 4,
}


def exponent(currency: str) -> int:
    """The currency's ISO 4217 minor-unit exponent: USD 2, JPY 0, KWD 3."""
    return _ISO.get(currency.lower(), 2)


class Unrepresentable(ValueError):
    """An amount the provider's API cannot carry; the message says why."""


@dataclass(frozen=True, slots=True)
class Units:
    """How a provider's API writes amounts of one currency."""

    decimals: int  # amount 1 is 10^-decimals of the major unit
    step: int = 1  # amounts must be multiples of this (ISK at Stripe: 100, whole kronur)


@dataclass(frozen=True)
class MinorUnits:
    """One provider's table: its API's units per currency, and conversions from and to ISO's.

    A currency not in `table` is written with ISO's exponent when ISO gives it two decimals
    and the provider takes it (`takes`, None: any); otherwise the provider documents no units
    for it, and every amount in it is refused.
    """

    provider: str
    table: dict[str, Units]
    takes: frozenset[str] | None = None

    def units(self, currency: str) -> Units:
        """The provider's units for `currency`, or Unrepresentable."""
        code = currency.lower()
        if self.takes is not None and code not in self.takes:
            raise Unrepresentable(f"{self.provider} does not take {code.upper()}")
        found = self.table.get(code)
        if found is not None:
            return found
        if exponent(code) != 2:
            raise Unrepresentable(f"{self.provider} documents no minor units for "
                                  f"{code.upper()}")
        return Units(2)

    def step(self, currency: str) -> int:
        """The ISO amounts of `currency` the provider can charge are the multiples of this."""
        units = self.units(currency)
        shift = units.decimals - exponent(currency)
        if shift >= 0:
            return units.step // gcd(units.step, _ten(shift))
        return _ten(-shift) * units.step

    def to_provider(self, currency: str, amount: int) -> int:
        """`amount` ISO minor units as the provider's API writes them, or Unrepresentable."""
        units = self.units(currency)
        step, iso, code = self.step(currency), exponent(currency), currency.upper()
        if amount % step:
            rule = ("in whole units only" if step == _ten(iso) else
                    f"in multiples of {_major(step, iso)} {code} (amounts a multiple of {step})")
            raise Unrepresentable(f"{self.provider} cannot charge {_major(amount, iso)} {code}: "
                                  f"it takes {code} {rule}")
        shift = units.decimals - iso
        return amount * _ten(shift) if shift >= 0 else amount // _ten(-shift)

    def from_provider(self, currency: str, amount: int, *, up: bool = False) -> int:
        """The provider's `amount` in ISO minor units; a fraction of one (an old charge made
        before a currency's rule changed) is dropped, or counted whole when `up`."""
        shift = exponent(currency) - self.units(currency).decimals
        if shift >= 0:
            return amount * _ten(shift)
        whole, rest = divmod(amount, _ten(-shift))
        return whole + (1 if up and rest else 0)


def _ten(power: int) -> int:
    """10^power, for power >= 0."""
    return int(10**power)  # int ** int is typed Any: the exponent might be negative


def major(amount: int, currency: str) -> str:
    """ISO minor units as major ones, exactly, for people: 1234 KWD is "1.234"."""
    return _major(amount, exponent(currency))


def _major(amount: int, decimals: int) -> str:
    if decimals == 0:
        return str(amount)
    whole, frac = divmod(amount, _ten(decimals))
    return f"{whole}.{frac:0{decimals}d}"


# Stripe, from https://docs.stripe.com/currencies ("Specify amounts in API requests"):
# - "Zero-decimal currencies": BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF
#   XPF are sent in whole units. ISO 4217 agrees except for MGA, which ISO gives 2 decimals.
# - "Three-decimal currencies": BHD JOD KWD OMR TND keep three decimals, but "the
#   least-significant (last) digit [must] be 0" (amounts are multiples of 10).
# - "Special cases": ISK and UGX "transitioned to a zero-decimal currency, but backwards
#   compatibility requires you to represent it as a two-decimal value, where the decimal
#   amount is always 00" (5 ISK is 500; ISO 4217 gives both 0 decimals). HUF and TWD are
#   zero-decimal for payouts only, "even though you can charge two-decimal amounts": a
#   charge keeps ISO's two decimals.
# Everything else is two-decimal; ISO's non-two currencies Stripe does not list (IQD, LYD,
# CLF, UYI, UYW) are refused.
STRIPE = MinorUnits("Stripe", {
    **dict.fromkeys(("bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
                     "vnd", "vuv", "xaf", "xof", "xpf"), Units(0)),
    **dict.fromkeys(("bhd", "jod", "kwd", "omr", "tnd"), Units(3, step=10)),
    **dict.fromkeys(("isk", "ugx"), Units(2, step=100)),
    **dict.fromkeys(("huf", "twd"), Units(2)),
})

# Dodo Payments: every amount is "in the currency's smallest unit (e.g. cents for USD, yen
# for JPY, fils for KWD — see the currency's decimal places)" (Payment.total_amount in the
# `dodopayments` SDK, generated from Dodo's OpenAPI document; docs.dodopayments.com, API
# reference, webhooks, payment), refunds' and disputes' amounts alike (a dispute's as a
# string): ISO 4217's exponent for every currency. It takes the currencies of its `Currency`
# enum, below as the SDK lists them (tests/test_currencies.py holds the two equal); no ISK.
DODO_CURRENCIES = frozenset((
    "aed", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt",
    "bgn", "bhd", "bif", "bmd", "bnd", "bob", "brl", "bsd", "bwp", "byn", "bzd", "cad",
    "chf", "clp", "cny", "cop", "crc", "cup", "cve", "czk", "djf", "dkk", "dop", "dzd",
    "egp", "etb", "eur", "fjd", "fkp", "gbp", "gel", "ghs", "gip", "gmd", "gnf", "gtq",
    "gyd", "hkd", "hnl", "hrk", "htg", "huf", "idr", "ils", "inr", "iqd", "jmd", "jod",
    "jpy", "kes", "kgs", "khr", "kmf", "krw", "kwd", "kyd", "kzt", "lak", "lbp", "lkr",
    "lrd", "lsl", "lyd", "mad", "mdl", "mga", "mkd", "mmk", "mnt", "mop", "mru", "mur",
    "mvr", "mwk", "mxn", "myr", "mzn", "nad", "ngn", "nio", "nok", "npr", "nzd", "omr",
    "pab", "pen", "pgk", "php", "pkr", "pln", "pyg", "qar", "ron", "rsd", "rub", "rwf",
    "sar", "sbd", "scr", "sek", "sgd", "shp", "sle", "sll", "sos", "srd", "ssp", "stn",
    "svc", "szl", "thb", "tnd", "top", "try", "ttd", "twd", "tzs", "uah", "ugx", "usd",
    "uyu", "uzs", "ves", "vnd", "vuv", "wst", "xaf", "xcd", "xof", "xpf", "yer", "zar",
    "zmw"))
DODO = MinorUnits("Dodo Payments", {code: Units(exponent(code)) for code in DODO_CURRENCIES},
                  takes=DODO_CURRENCIES)
