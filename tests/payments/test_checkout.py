"""Checkout with the official SDKs, against a local stand-in of each provider's HTTP API
that records the exact requests it receives."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.auth import mint_token
from server.catalog import CatalogError
from server.config import Settings
from tests.conftest import RunningApp, StartApp, key
from tests.payments.standin import StandIn
from tests.payments.test_webhooks import post_stripe, stripe_event

RETURN = "https://app.example/"
CATALOG = {
    "prices": {"generate_image": 5},
    "packages": {
        "starter": {"credits": 100, "price": {"usd": 500, "eur": 450},
                    "stripe_price": "price_starter", "dodo_product": "pdt_starter"},
        "plain": {"credits": 40, "price": {"usd": 300}},
        # Catalog prices are in ISO 4217 minor units; Stripe counts these otherwise.
        "isk_pack": {"credits": 1500, "price": {"isk": 150_000}},  # 150,000 kr (ISO: 0)
        "mga_pack": {"credits": 1000, "price": {"mga": 10_000_000}},  # 100,000.00 Ar (ISO: 2)
        "kwd_pack": {"credits": 300, "price": {"kwd": 5_120}},  # 5.120 KD (3)
        "huf_pack": {"credits": 200, "price": {"huf": 104_550}},  # 1,045.50 Ft (2)
    },
    "pay_as_you_go": {"credits_per_unit": {"usd": 20, "isk": 1, "mga": 1, "kwd": 1000,
                                           "huf": 1},
                      "min_amount": {"usd": 100}},
}
WEBHOOK_SECRET = "whsec_" + "c" * 32


@pytest.fixture(scope="module")
async def shop(start_app: StartApp, stand_in: StandIn,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningApp]:
    catalog = tmp_path_factory.mktemp("shop") / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    app = await start_app(
        catalog_file=str(catalog), stripe_api_key="sk_test_standin",
        stripe_api_base=stand_in.url, dodo_api_key="dodo_test_standin",
        dodo_api_base=stand_in.url,
        checkout_return_urls=(RETURN, "https://shop.example.com/app", "http://127.0.0.1:8000/"),
        stripe_webhook_secret=WEBHOOK_SECRET)
    yield app
    # Stopped with its module: its jobs (auto top-up) would work other tests' rows.
    await app.stop()


@pytest.fixture
def account() -> str:
    return f"shopper-{uuid.uuid4().hex[:10]}"


async def test_stripe_checkout_for_a_package_sends_exactly_this(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    body = {"provider": "stripe", "package": "starter", "success_url": RETURN + "ok",
            "cancel_url": RETURN + "no", "customer_email": "a@b.example",
            "idempotency_key": key()}
    async with shop.client() as c:
        before = len(stand_in.seen)
        r = await c.post(f"/v1/accounts/{account}/checkout", json=body)
        assert r.status_code == 201, r.text
        answer = r.json()
        assert (answer["provider"], answer["credits"], answer["amount"], answer["currency"]) == (
            "stripe", 100, 500, "usd")
        assert answer["url"].endswith(answer["session_id"])
        (seen,) = stand_in.seen[before:]
        assert (seen.method, seen.path) == ("POST", "/v1/checkout/sessions")
        assert seen.headers["authorization"] == "Bearer sk_test_standin"
        assert len(seen.headers["idempotency-key"]) == 64
        assert seen.form == {
            "mode": "payment", "line_items[0][price]": "price_starter",
            "line_items[0][quantity]": "1", "success_url": RETURN + "ok",
            "cancel_url": RETURN + "no", "customer_email": "a@b.example",
            "client_reference_id": account, "metadata[account_id]": account,
            "metadata[package]": "starter",
            "payment_intent_data[metadata][account_id]": account,
            "payment_intent_data[metadata][package]": "starter",
        }
        # The same key again: the same session, and the provider is not asked twice.
        again = await c.post(f"/v1/accounts/{account}/checkout", json=body)
        assert again.status_code == 201 and again.json() == answer
        assert again.headers["idempotent-replayed"] == "true"
        assert len(stand_in.seen) == before + 1
        other = await c.post(f"/v1/accounts/{account}/checkout",
                             json={**body, "package": "plain"})
        assert other.status_code == 409


async def test_stripe_pay_as_you_go_prices_the_amount_itself(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    async with shop.client() as c:
        before = len(stand_in.seen)
        r = await c.post(f"/v1/accounts/{account}/checkout", json={
            "provider": "stripe", "amount": 1250, "currency": "USD",
            "success_url": RETURN, "idempotency_key": key()})
        assert r.status_code == 201, r.text
        assert (r.json()["credits"], r.json()["package"]) == (250, None)
        form = stand_in.seen[before].form
        assert (form["line_items[0][price_data][currency]"],
                form["line_items[0][price_data][unit_amount]"],
                form["line_items[0][price_data][product_data][name]"]) == (
                    "usd", "1250", "250 credits")
        assert "metadata[package]" not in form and form["metadata[account_id]"] == account
        r = await c.post(f"/v1/accounts/{account}/checkout", json={
            "provider": "stripe", "amount": 50, "currency": "usd",
            "success_url": RETURN, "idempotency_key": key()})
        assert r.status_code == 422 and "starts at 100" in r.json()["message"]


async def test_dodo_checkout_from_the_browser(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    token = mint_token(shop.settings.token_secret, account, 600)[0]
    async with httpx.AsyncClient(base_url=shop.base_url,
                                 headers={"Authorization": f"Bearer {token}"}) as browser:
        before = len(stand_in.seen)
        r = await browser.post("/v1/me/checkout", json={
            "provider": "dodo", "package": "starter", "success_url": RETURN + "done",
            "idempotency_key": key()})
        assert r.status_code == 201, r.text
        assert r.json()["url"].startswith("https://test.checkout.dodopayments.com/cks_")
        (seen,) = stand_in.seen[before:]
        assert (seen.path, seen.headers["authorization"]) == ("/checkouts",
                                                             "Bearer dodo_test_standin")
        assert seen.json == {
            "product_cart": [{"product_id": "pdt_starter", "quantity": 1}],
            "return_url": RETURN + "done", "cancel_url": None,
            "metadata": {"account_id": account, "package": "starter"}}
        r = await browser.post("/v1/me/checkout", json={
            "provider": "dodo", "package": "plain", "success_url": RETURN,
            "idempotency_key": key()})
        assert r.status_code == 422 and "dodo_product" in r.json()["message"]


async def test_return_urls_are_restricted_and_nothing_is_asked(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    async with shop.client() as c:
        before = len(stand_in.seen)
        for urls in ({"success_url": "https://evil.example/"},
                     {"success_url": RETURN, "cancel_url": "https://app.example.evil/"}):
            r = await c.post(f"/v1/accounts/{account}/checkout", json={
                "provider": "stripe", "package": "starter", "idempotency_key": key(), **urls})
            assert r.status_code == 422 and "BALANCE_CHECKOUT_RETURN_URLS" in r.text
        assert len(stand_in.seen) == before


async def test_a_provider_failure_is_502_and_writes_nothing(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    body = {"provider": "stripe", "package": "plain", "success_url": RETURN,
            "idempotency_key": key()}
    async with shop.client() as c:
        stand_in.failing = True
        try:
            r = await c.post(f"/v1/accounts/{account}/checkout", json=body)
        finally:
            stand_in.failing = False
        assert r.status_code == 502 and r.json()["error"] == "provider_unavailable", r.text
        r = await c.post(f"/v1/accounts/{account}/checkout", json=body)  # the same key, later
        assert r.status_code == 201 and "idempotent-replayed" not in r.headers


async def test_checkout_then_its_payment_credits_the_package(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    async with shop.client() as c:
        r = await c.post(f"/v1/accounts/{account}/checkout", json={
            "provider": "stripe", "package": "starter", "success_url": RETURN,
            "idempotency_key": key()})
        form = stand_in.seen[-1].form
        # What Stripe sends once the buyer paid: the metadata the checkout put on it.
        paid = {"id": r.json()["session_id"], "object": "checkout.session", "mode": "payment",
                "payment_status": "paid", "payment_intent": f"pi_{uuid.uuid4().hex[:10]}",
                "amount_total": 500, "currency": "usd",
                "metadata": {"account_id": form["metadata[account_id]"],
                             "package": form["metadata[package]"]}}
        async with httpx.AsyncClient(base_url=shop.base_url) as stripe_side:
            hook = await post_stripe(stripe_side, stripe_event("checkout.session.completed", paid),
                                     secret=shop.settings.stripe_webhook_secret or "")
        assert hook.json()["result"] == "fulfilled", hook.text
        assert (await c.get(f"/v1/accounts/{account}")).json()["balance"] == 100


# ---------------------------------------------------------------- return URLs

ALLOWED = [
    "https://app.example/", "https://app.example/ok?x=1#y",
    "https://pay.example.com", "https://pay.example.com/", "https://pay.example.com/done?x=1#y",
    "https://PAY.Example.com/ok", "https://pay.example.com:443/ok", "https://pay.example.com?x",
    "https://shop.example.com/app", "https://shop.example.com/app/", "https://shop.example.com/app/x",
    "https://shop.example.com/app?from=checkout", "https://shop.example.com/app#top",
    "https://shop.example.com/app/..x", "https://shop.example.com/app?to=/../x",
    "https://pay.example.com/../x",
    "http://127.0.0.1:8000/", "http://127.0.0.1:8000/x?y",
]
REFUSED = [
    "https://pay.example.com.evil.io/", "https://pay.example.com@evil.io/",
    "https://pay.example.com:@evil.io/", "https://user:pw@pay.example.com/",
    "https://pay.example.com:8443/", "http://pay.example.com/", "https://pay.example.comevil.io",
    "https://pay.example.com%2eevil.io/", "https://pay.example.com\\@evil.io/",
    "https://pay.example.com/ok\\x", "https://pay.example.com/ ok", "//pay.example.com/",
    "https://shop.example.com/apps", "https://shop.example.com/app.evil/",
    "https://shop.example.com/application", "https://shop.example.com/", "https://shop.example.com",
    "https://shop.example.com/app/../admin", "https://shop.example.com/app/%2E%2e/admin",
    "https://shop.example.com/app/..",
    "https://app.example.evil/", "http://127.0.0.1:8001/", "http://127.0.0.1:8000@evil.io/",
    "http://127.0.0.1:80001/", "javascript:alert(1)//https://pay.example.com/",
]


@pytest.fixture(scope="module")
async def allowlisted(start_app: StartApp, stand_in: StandIn) -> AsyncIterator[RunningApp]:
    app = await start_app(
        stripe_api_key="sk_test_standin", stripe_api_base=stand_in.url,
        checkout_return_urls=(RETURN, "https://pay.example.com", "https://shop.example.com/app",
                              "http://127.0.0.1:8000/"))
    yield app
    await app.stop()


async def test_return_urls_are_compared_by_origin_and_path_boundary(
    allowlisted: RunningApp, stand_in: StandIn, account: str
) -> None:
    """An allowed `https://pay.example.com` admits that origin only: not
    `pay.example.com.evil.io`, not `pay.example.com@evil.io`; `/app` admits `/app/...`, not
    `/apps`. /openapi.json states the same rule, URL for URL."""
    async with allowlisted.client() as c:
        schema = (await c.get("/openapi.json")).json()["components"]["schemas"]
        pattern = schema["CheckoutRequest"]["properties"]["success_url"]["allOf"][1]["pattern"]
        # Pay-as-you-go is not in this app's catalog: only the URL decides 201 or 422.
        for url in REFUSED + ALLOWED:
            before = len(stand_in.seen)
            r = await c.post(f"/v1/accounts/{account}/checkout", json={
                "provider": "stripe", "package": None, "amount": None,
                "success_url": RETURN, "cancel_url": url, "idempotency_key": key()})
            refused_for_url = "BALANCE_CHECKOUT_RETURN_URLS" in r.text
            assert refused_for_url == (url in REFUSED), (url, r.status_code, r.text)
            assert len(stand_in.seen) == before  # the provider is never asked
            assert (re.search(pattern, url) is not None) == (url in ALLOWED), (url, pattern)


# ---------------------------------------------------------------- provider currency units


async def pay(shop: RunningApp, obj: dict[str, object],
              kind: str = "checkout.session.completed") -> httpx.Response:
    """Stripe's webhook for `obj`, signed as Stripe signs it."""
    async with httpx.AsyncClient(base_url=shop.base_url) as stripe_side:
        return await post_stripe(stripe_side, stripe_event(kind, obj), secret=WEBHOOK_SECRET)


async def bought(c: httpx.AsyncClient, shop: RunningApp, stand_in: StandIn, account: str,
                 **offer: object) -> tuple[str, str]:
    """Checkout for `offer`, paid on the stand-in and its webhook sent: (the unit amount
    Stripe was asked for, the PaymentIntent)."""
    r = await c.post(f"/v1/accounts/{account}/checkout", json={
        "provider": "stripe", "success_url": RETURN, "idempotency_key": key(), **offer})
    assert r.status_code == 201, r.text
    session = r.json()["session_id"]
    hook = await pay(shop, stand_in.paid_session(session))
    assert hook.json()["result"] == "fulfilled", hook.text
    sent = stand_in.seen[-1].form["line_items[0][price_data][unit_amount]"]
    return sent, str(stand_in.sessions[session]["payment_intent"])


async def balance(c: httpx.AsyncClient, account: str) -> int:
    body = (await c.get(f"/v1/accounts/{account}")).json()
    value: int = body["balance"]
    return value


async def test_isk_is_charged_in_whole_kronur_as_stripe_counts_them(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    """ISO 4217 gives ISK no decimals; Stripe's API keeps two (always 00): 150,000 kr is
    15000000 there. Sent as 150000, Stripe would charge 1,500 kr and the webhook credit all."""
    async with shop.client() as c:
        sent, pi = await bought(c, shop, stand_in, account, package="isk_pack")
        assert sent == "15000000"  # 150,000 kr
        assert await balance(c, account) == 1500
        sent, payg = await bought(c, shop, stand_in, account, amount=2_500, currency="isk")
        assert sent == "250000"  # 2,500 kr at a credit a krona
        assert await balance(c, account) == 4000
        # Refunds and disputes come in Stripe's units too: half of each is taken back.
        r = await pay(shop, {"id": f"ch_{pi}", "object": "charge", "payment_intent": pi,
                             "amount": 15_000_000, "amount_captured": 15_000_000,
                             "amount_refunded": 7_500_000, "refunded": False,
                             "currency": "isk"}, "charge.refunded")
        assert r.json()["credits_reversed"] == 750, r.text
        r = await pay(shop, {"id": f"dp_{payg}", "object": "dispute", "amount": 125_000,
                             "currency": "isk", "charge": f"ch_{payg}", "payment_intent": payg,
                             "status": "needs_response"}, "charge.dispute.created")
        assert r.json()["credits_disputed"] == 1250, r.text
        assert await balance(c, account) == 4000 - 750 - 1250


async def test_mga_is_charged_in_whole_ariary_as_stripe_counts_them(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    """ISO 4217 gives MGA two decimals; Stripe's API none: 100,000.00 Ar is 100000 there.
    Read as ISO, a payment made in Stripe buys 100 times too few credits."""
    async with shop.client() as c:
        sent, _ = await bought(c, shop, stand_in, account, package="mga_pack")
        assert sent == "100000"  # 100,000 Ar
        assert await balance(c, account) == 1000
        sent, _ = await bought(c, shop, stand_in, account, amount=50_000, currency="mga")
        assert sent == "500"  # 500 Ar, a credit an ariary
        assert await balance(c, account) == 1500
        # A PaymentIntent the app made itself: 20,000 Ar buy 20,000 credits, not 200.
        r = await pay(shop, {"id": f"pi_{uuid.uuid4().hex[:12]}", "object": "payment_intent",
                             "amount": 20_000, "amount_received": 20_000, "currency": "mga",
                             "status": "succeeded", "metadata": {"account_id": account}},
                      "payment_intent.succeeded")
        assert r.json()["result"] == "fulfilled", r.text
        assert await balance(c, account) == 21_500
        # A fraction of an ariary cannot be charged: refused before Stripe is asked.
        await refused_before_stripe(c, stand_in, account, 12_345, "mga", "whole")


async def refused_before_stripe(c: httpx.AsyncClient, stand_in: StandIn, account: str,
                                amount: int, currency: str, says: str) -> None:
    """A pay-as-you-go amount Stripe cannot charge: 422 naming why, and Stripe never asked."""
    before = len(stand_in.seen)
    r = await c.post(f"/v1/accounts/{account}/checkout", json={
        "provider": "stripe", "amount": amount, "currency": currency, "success_url": RETURN,
        "idempotency_key": key()})
    assert r.status_code == 422 and says in r.json()["message"], r.text
    assert len(stand_in.seen) == before


async def test_kwd_three_decimals_end_in_zero_at_stripe(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    """Stripe takes KWD with ISO's three decimals, but only amounts whose last digit is 0."""
    async with shop.client() as c:
        sent, _ = await bought(c, shop, stand_in, account, package="kwd_pack")
        assert sent == "5120"  # 5.120 KD
        sent, _ = await bought(c, shop, stand_in, account, amount=2_500, currency="kwd")
        assert sent == "2500"  # 2.500 KD at 1,000 credits a dinar
        assert await balance(c, account) == 300 + 2500
        await refused_before_stripe(c, stand_in, account, 1_235, "kwd", "multiple of 10")


async def test_huf_charges_keep_their_two_decimals_at_stripe(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    """Stripe's whole-forint rule is for payouts only: a charge keeps ISO's two decimals."""
    async with shop.client() as c:
        sent, _ = await bought(c, shop, stand_in, account, package="huf_pack")
        assert sent == "104550"  # 1,045.50 Ft
        sent, _ = await bought(c, shop, stand_in, account, amount=1_045, currency="huf")
        assert sent == "1045"  # 10.45 Ft: 10 credits at one a forint
        assert await balance(c, account) == 210


@pytest.mark.parametrize(("price", "why"), [
    ({"mga": 12_345}, "packages.odd.price.mga"),
    ({"kwd": 5_125}, "packages.odd.price.kwd"),
    ({"iqd": 5_000}, "packages.odd.price.iqd"),
])
def test_a_price_stripe_cannot_charge_stops_the_server(
    tmp_path: Path, price: dict[str, int], why: str
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"packages": {"odd": {"credits": 1, "price": price}}}))
    env = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "BALANCE_SERVICE_KEYS": "sk_test_" + "k" * 20, "BALANCE_TOKEN_SECRET": "s" * 40,
           "BALANCE_CATALOG_FILE": str(catalog)}
    with pytest.raises(CatalogError, match=re.escape(why)):
        create_app(Settings.from_env({**env, "BALANCE_STRIPE_API_KEY": "sk_test_x"}))
    create_app(Settings.from_env(env))  # without Stripe, nobody is asked to charge it
