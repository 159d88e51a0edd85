"""The catalog: validated once with errors that name the field; money in, credits out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.catalog import Catalog, CatalogError, Unpriced, load

EXAMPLE = """
[prices]
image_generation = 5
theme_generation = 1

[packages.starter]
credits = 100
price = { usd = 500, EUR = 450 }
stripe_price = "price_1Nabc"
dodo_product = "pdt_abc"

[pay_as_you_go]
credits_per_unit = { usd = 20, jpy = 1, kwd = 300 }
min_amount = { usd = 100 }

[plans.free]
allowance = 50
period = "month"

[plans.pro]
allowance = 1000
rollover = 500
prices = { image_generation = 3 }
limits = { image_generation = 50 }
low_balance = 100

[alerts]
low_balance = 20
"""


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "catalog.toml"
    path.write_text(EXAMPLE)
    return load(str(path), None)


def test_the_contract_example_loads(catalog: Catalog) -> None:
    assert catalog.prices == {"image_generation": 5, "theme_generation": 1}
    assert catalog.packages["starter"].price == {"usd": 500, "eur": 450}
    assert catalog.plans["pro"].prices == {"image_generation": 3}
    assert catalog.plans["free"].rollover == 0 and catalog.alerts.low_balance == 20


@pytest.mark.parametrize(("edit", "named"), [
    (("credits = 100", "credits = 0"), "packages.starter.credits"),
    (("credits = 100", 'credits = "100"'), "packages.starter.credits"),
    (("usd = 500", "usd = 5.5"), "packages.starter.price.usd"),
    (('period = "month"', 'period = "year"'), "plans.free.period"),
    (("rollover = 500", "rolover = 500"), "rolover"),
    (("prices = { image_generation = 3 }", "prices = { video = 3 }"),
     "plans.pro.prices.video"),
    (("limits = { image_generation = 50 }", "limits = { image_generation = 0 }"),
     "plans.pro.limits.image_generation"),
])
def test_a_bad_field_is_named(tmp_path: Path, edit: tuple[str, str], named: str) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(EXAMPLE.replace(*edit, 1))
    with pytest.raises(CatalogError, match=r"BALANCE_CATALOG_FILE") as caught:
        load(str(path), None)
    assert named in str(caught.value)


def test_json_and_the_prices_shorthand(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"upscale": 2}')
    assert load(None, str(prices)).prices == {"upscale": 2}
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"prices": {"generate": 7}}))
    assert load(str(catalog), str(prices)).prices == {"generate": 7}  # the catalog wins
    prices.write_text('{"upscale": 2.5}')
    with pytest.raises(CatalogError, match="BALANCE_PRICES_FILE"):
        load(None, str(prices))
    with pytest.raises(CatalogError, match="not readable"):
        load(str(tmp_path / "missing.toml"), None)


def test_packages_need_their_price_in_that_currency(catalog: Catalog) -> None:
    assert catalog.credits_for("starter", 500, "usd") == 100
    assert catalog.credits_for("starter", 450, "EUR") == 100
    assert catalog.credits_for("starter", 9999, "usd") == 100  # tips buy nothing more
    for amount, currency, why in ((499, "usd", "costs 500"), (500, "gbp", "no price in gbp"),
                                  (None, "usd", "no amount")):
        with pytest.raises(Unpriced, match=why):
            catalog.credits_for("starter", amount, currency)
    with pytest.raises(Unpriced, match="unknown package"):
        catalog.credits_for("mega", 100_000, "usd")


def test_a_quantity_of_packages_needs_all_of_their_price(catalog: Catalog) -> None:
    assert catalog.credits_for("starter", 1500, "usd", 3) == 300
    assert catalog.credits_for("starter", 1999, "usd", 3) == 300  # a tip buys no fourth
    # Underpaid: neither fewer packages nor pay-as-you-go; metadata cannot ask for more.
    for amount, quantity, why in ((1499, 3, "3 × package 'starter' costs 1500"),
                                  (500, 0, "outside 1..1000"), (10**7, 1001, "outside")):
        with pytest.raises(Unpriced, match=why):
            catalog.credits_for("starter", amount, "usd", quantity)
    with pytest.raises(Unpriced, match="without a package"):
        catalog.credits_for(None, 1000, "usd", 2)


def test_pay_as_you_go_uses_the_currency_exponent(catalog: Catalog) -> None:
    assert catalog.credits_for(None, 1000, "usd") == 200  # $10.00 at 20 a dollar
    assert catalog.credits_for(None, 1099, "usd") == 219  # floored
    assert catalog.credits_for(None, 1000, "jpy") == 1000  # yen have no minor unit
    assert catalog.credits_for(None, 1500, "kwd") == 450  # 1.500 dinar, 3 decimals
    with pytest.raises(Unpriced, match="starts at 100"):
        catalog.credits_for(None, 99, "usd")
    with pytest.raises(Unpriced, match="no pay-as-you-go rate in eur"):
        catalog.credits_for(None, 1000, "eur")
    # A package that is underpaid is not turned into pay-as-you-go credits.
    with pytest.raises(Unpriced, match="costs 500"):
        catalog.credits_for("starter", 400, "usd")
