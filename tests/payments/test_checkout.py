"""Checkout with the official SDKs, against a local stand-in of each provider's HTTP API
that records the exact requests it receives."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from server.auth import mint_token
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
    },
    "pay_as_you_go": {"credits_per_unit": {"usd": 20}, "min_amount": {"usd": 100}},
}


@pytest.fixture(scope="module")
async def shop(start_app: StartApp, stand_in: StandIn,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningApp]:
    catalog = tmp_path_factory.mktemp("shop") / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    app = await start_app(
        catalog_file=str(catalog), stripe_api_key="sk_test_standin",
        stripe_api_base=stand_in.url, dodo_api_key="dodo_test_standin",
        dodo_api_base=stand_in.url, checkout_return_urls=(RETURN,),
        stripe_webhook_secret="whsec_" + "c" * 32)
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
