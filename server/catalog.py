"""The catalog: prices, packages, pay-as-you-go rates, plans and alert defaults.

One file (`BALANCE_CATALOG_FILE`, TOML or JSON), read and validated once at start; a bad
file stops the server with a sentence naming the field. `BALANCE_PRICES_FILE` (a JSON
object operation -> cost) is the shorthand for a catalog with only `[prices]`.

`credits_for` is the one rule that turns money received into credits: the server never
takes a credit count from checkout metadata, which a customer can set. Amounts here are ISO
4217 minor units; server/currencies.py converts what a provider's API counts otherwise.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from server.currencies import MinorUnits, Unrepresentable, exponent

log = logging.getLogger("balance.catalog")

Currency = Annotated[str, msgspec.Meta(pattern="^[a-z]{3}$")]  # ISO 4217, lower case
MAX_CREDITS = 10**12  # the most one movement, grant or charge may carry
MAX_QUANTITY = 10**9  # the most units of an operation one charge may ask for
MAX_PACKAGES = 1000  # the most packages one payment may buy (an auto top-up to its target)
Credits = Annotated[int, msgspec.Meta(ge=1, le=MAX_CREDITS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_CREDITS)]  # credits, where 0 means none
Money = Annotated[int, msgspec.Meta(ge=1, le=10**15)]  # minor units
Name = Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_.:-]{1,100}$")]

class CatalogError(Exception):
    """The catalog file is unreadable or invalid; the message names the field."""


class Package(msgspec.Struct, forbid_unknown_fields=True):
    """What one payment buys."""

    credits: Credits
    price: dict[Currency, Money]
    stripe_price: str | None = None
    dodo_product: str | None = None

    def default_currency(self) -> str:
        """The currency a checkout or top-up charges when none is asked: USD if priced in it."""
        return "usd" if "usd" in self.price else next(iter(self.price))


class PayAsYouGo(msgspec.Struct, forbid_unknown_fields=True):
    """Any amount buys credits at a rate per major unit of its currency."""

    credits_per_unit: dict[Currency, Credits]
    min_amount: dict[Currency, Annotated[int, msgspec.Meta(ge=0, le=10**15)]] = {}


class Plan(msgspec.Struct, forbid_unknown_fields=True):
    """A plan; one that names its provider product (`stripe_price`, `dodo_product`) follows
    that subscription: its periods and allowance come from the provider's paid invoices."""

    allowance: Count
    period: Literal["month", "week", "day"] = "month"
    rollover: Count = 0
    prices: dict[Name, Credits] = {}
    limits: dict[Name, Credits] = {}
    low_balance: Count | None = None
    stripe_price: str | None = None
    dodo_product: str | None = None

    def product(self, provider: str) -> str | None:
        """What this plan is sold as at `provider` (stripe, dodo), if it is."""
        return self.stripe_price if provider == "stripe" else self.dodo_product


class Alerts(msgspec.Struct, forbid_unknown_fields=True):
    low_balance: Count | None = None


class Catalog(msgspec.Struct, forbid_unknown_fields=True):
    prices: dict[Name, Credits] = {}
    packages: dict[Name, Package] = {}
    pay_as_you_go: PayAsYouGo | None = None
    plans: dict[Name, Plan] = {}
    alerts: Alerts = msgspec.field(default_factory=Alerts)

    def max_quantity(self, operation: str) -> int:
        """The largest quantity of `operation` one charge may ask for: its cost at the
        operation's highest price under any plan stays within 10^12 credits. A catalog rule,
        not an account's, so /openapi.json can state it."""
        top = max([self.prices[operation]] + [
            plan.prices[operation] for plan in self.plans.values() if operation in plan.prices])
        return min(MAX_QUANTITY, MAX_CREDITS // top)

    def plan_for(self, provider: str, product: str | None) -> str | None:
        """The plan a subscription to `product` at `provider` follows, if any."""
        if product is None:
            return None
        return next((plan_id for plan_id, plan in self.plans.items()
                     if plan.product(provider) == product), None)

    def credits_for(self, package: str | None, amount: int | None, currency: str | None,
                    quantity: int = 1) -> int:
        """Credits for `amount` minor units of `currency` paid, or Unpriced saying why not.

        A named package bought `quantity` times gives quantity × its credits when the amount
        is at least quantity × its price in that currency; without one, pay-as-you-go gives
        floor(amount × rate ÷ 10^exponent) from its minimum up. A package underpaid is not
        turned into pay-as-you-go credits, nor into fewer packages: what was asked and what
        was paid disagree, and an operator decides.
        """
        if amount is None or not currency:
            raise Unpriced("the payment has no amount or currency")
        currency = currency.lower()
        if not 1 <= quantity <= MAX_PACKAGES:
            raise Unpriced(f"quantity {quantity} is outside 1..{MAX_PACKAGES}")
        if package is not None:
            found = self.packages.get(package)
            if found is None:
                raise Unpriced(f"unknown package {package!r}")
            price = found.price.get(currency)
            if price is None:
                raise Unpriced(f"package {package!r} has no price in {currency}")
            if amount < price * quantity:
                bought = f"{quantity} × package {package!r}" if quantity > 1 else \
                    f"package {package!r}"
                raise Unpriced(f"paid {amount} {currency}, {bought} costs {price * quantity}")
            if found.credits * quantity > MAX_CREDITS:
                raise Unpriced(f"{quantity} × package {package!r} is more than 10^12 credits")
            return found.credits * quantity
        if quantity != 1:
            raise Unpriced(f"quantity {quantity} without a package")
        payg = self.pay_as_you_go
        rate = payg.credits_per_unit.get(currency) if payg is not None else None
        if payg is None or rate is None:
            raise Unpriced(f"no package named, and no pay-as-you-go rate in {currency}")
        minimum = payg.min_amount.get(currency, 1)
        if amount < minimum:
            raise Unpriced(f"paid {amount} {currency}, pay-as-you-go starts at {minimum}")
        credits: int = amount * rate // 10 ** exponent(currency)
        if not 1 <= credits <= MAX_CREDITS:
            raise Unpriced(f"{amount} {currency} buys {credits} credits, outside 1..10^12")
        return credits

    def payg_amounts(self, currency: str) -> tuple[int, int]:
        """The amounts (minor units) `credits_for` turns into 1..10^12 pay-as-you-go credits
        in `currency`, which must have a rate: what a checkout may ask for."""
        assert self.pay_as_you_go is not None
        rate = self.pay_as_you_go.credits_per_unit[currency]
        unit = 10 ** exponent(currency)
        lo = max(self.pay_as_you_go.min_amount.get(currency, 1), -(-unit // rate))
        return lo, ((MAX_CREDITS + 1) * unit - 1) // rate


class Unpriced(Exception):
    """A payment the catalog does not turn into credits; the message says why."""


def _lower_currencies(data: Any) -> Any:
    """Currency keys as providers send them differ in case (Stripe usd, Dodo USD)."""
    for package in (data.get("packages") or {}).values():
        if isinstance(package, dict) and isinstance(package.get("price"), dict):
            package["price"] = {str(k).lower(): v for k, v in package["price"].items()}
    payg = data.get("pay_as_you_go")
    if isinstance(payg, dict):
        for field in ("credits_per_unit", "min_amount"):
            if isinstance(payg.get(field), dict):
                payg[field] = {str(k).lower(): v for k, v in payg[field].items()}
    return data


def _name_keys(data: dict[str, Any], message: str) -> str:
    """msgspec writes a table's key as `[...]` in an error's path: name it, by keeping one
    entry of that table at a time until the same error comes back."""
    text, sep, path = message.rpartition(" - at `")
    if not sep or "[...]" not in path:
        return message
    probe = copy.deepcopy(data)
    node: Any = probe
    named = "$"
    for field, table in re.findall(r"\.(\w+)|(\[\.\.\.\])", path.rstrip("`")[1:]):
        if field:
            node, named = node[field], f"{named}.{field}"
            continue
        assert table and isinstance(node, dict)
        for key in list(node):
            kept = {key: node[key]}
            others = {k: v for k, v in node.items() if k != key}
            node.clear()
            node.update(kept)
            try:
                msgspec.convert(probe, Catalog, strict=True)
            except msgspec.ValidationError as again:
                if str(again).rpartition(" - at `")[2] == path:
                    node, named = node[key], f"{named}.{key}"
                    break
            node.update(others)
        else:
            return message
    return f"{text} - at `{named[2:]}`"


def load(catalog_file: str | None, prices_file: str | None,
         charged_by: Sequence[MinorUnits] = ()) -> Catalog:
    """The catalog from its file (or the price list's), validated; CatalogError names what
    is wrong. `charged_by`: the providers asked to charge its prices (checkout, auto
    top-up), which must be able to write each of them and take each pay-as-you-go currency."""
    if catalog_file:
        if prices_file:
            log.warning("BALANCE_CATALOG_FILE and BALANCE_PRICES_FILE are both set: "
                        "the catalog wins")
        name, path = "BALANCE_CATALOG_FILE", Path(catalog_file)
        try:
            text = path.read_text()
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{name} {catalog_file!r} is not readable: {exc}") from None
    elif prices_file:
        name, path = "BALANCE_PRICES_FILE", Path(prices_file)
        try:
            data = {"prices": json.loads(path.read_text())}
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{name} {prices_file!r} is not readable JSON: {exc}") from None
    else:
        return Catalog()
    if not isinstance(data, dict):
        raise CatalogError(f"{name} must hold an object (a TOML table or a JSON object)")
    data = _lower_currencies(data)
    try:
        catalog = msgspec.convert(data, Catalog, strict=True)
    except msgspec.ValidationError as exc:
        raise CatalogError(f"{name}: {_name_keys(data, str(exc))}") from None
    for plan_id, plan in catalog.plans.items():
        for field, table in (("prices", plan.prices), ("limits", plan.limits)):
            for operation in table:
                if operation not in catalog.prices:
                    raise CatalogError(f"{name}: plans.{plan_id}.{field}.{operation} names an "
                                       "operation that is not in [prices]")
    _check_products(catalog, name)
    for units in charged_by:
        _check_chargeable(catalog, units, name)
    return catalog


def _check_products(catalog: Catalog, name: str) -> None:
    """CatalogError when one provider product is sold as two things: a subscription event
    must name exactly one plan, and a plan's product is no package."""
    for provider in ("stripe", "dodo"):
        field = "stripe_price" if provider == "stripe" else "dodo_product"
        seen: dict[str, str] = {}
        owners = [(f"packages.{p}", getattr(package, field))
                  for p, package in catalog.packages.items()]
        owners += [(f"plans.{p}", plan.product(provider)) for p, plan in catalog.plans.items()]
        for owner, product in owners:
            if product is None:
                continue
            if product in seen:
                raise CatalogError(f"{name}: {owner}.{field} {product!r} is also "
                                   f"{seen[product]}'s: one product sells one thing")
            seen[product] = owner


def _check_chargeable(catalog: Catalog, units: MinorUnits, name: str) -> None:
    """CatalogError unless the provider can charge every package price as it is, and take
    every pay-as-you-go currency: rounding a price would sell credits for other money."""
    fields: list[tuple[str, str, int | None]] = [
        (f"packages.{package_id}.price.{currency}", currency, amount)
        for package_id, package in catalog.packages.items()
        for currency, amount in package.price.items()]
    if catalog.pay_as_you_go is not None:
        fields += [(f"pay_as_you_go.credits_per_unit.{currency}", currency, None)
                   for currency in catalog.pay_as_you_go.credits_per_unit]
    for field, currency, amount in fields:
        try:
            if amount is None:
                units.units(currency)
            else:
                units.to_provider(currency, amount)
        except Unrepresentable as exc:
            raise CatalogError(f"{name}: {field}: {exc}") from None


def to_json(catalog: Catalog) -> bytes:
    """The catalog as GET /v1/catalog answers it (it holds no secrets)."""
    return msgspec.json.encode(catalog)
