"""Auto top-up with the official Stripe SDK against a local stand-in of Stripe's API that
records the exact requests: one PaymentIntent however many debits cross, credits through the
ordinary webhook, off after three declines in a row."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import RunningApp, StartApp, key
from tests.payments.standin import Seen, StandIn
from tests.payments.test_webhooks import STRIPE_SECRET, post_stripe, stripe_event
from tests.receiver import SECRET, Receiver

CATALOG = {"prices": {"generate_image": 5},
           "packages": {"starter": {"credits": 100, "price": {"usd": 500}},
                        # 15,000 kr: ISO 4217 gives ISK no decimals, Stripe's API two.
                        "krona": {"credits": 1500, "price": {"isk": 15_000}}}}
CONFIG = {"package": "starter", "threshold": 50, "stripe_customer": "cus_test123",
          "stripe_payment_method": "pm_card_visa"}


@pytest.fixture
async def shop(start_app: StartApp, stand_in: StandIn, receiver: Receiver,
               tmp_path: Path) -> AsyncIterator[RunningApp]:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    app = await start_app(
        catalog_file=str(catalog), stripe_api_key="sk_test_standin",
        stripe_api_base=stand_in.url, stripe_webhook_secret=STRIPE_SECRET,
        app_webhook_url=receiver.url, app_webhook_secret=SECRET,
        app_webhook_events=("top_up.requested", "top_up.failed", "purchase.completed"),
        app_webhook_retry=(0.2,), outbox_lease=3.0, app_webhook_timeout=2.0)
    yield app
    await app.stop()  # its workers would take the next test's requests and events


def intents(stand_in: StandIn, account: str) -> list[Seen]:
    return [s for s in stand_in.seen if s.path == "/v1/payment_intents"
            and s.form.get("metadata[account_id]") == account]


async def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


async def debit(c: httpx.AsyncClient, account: str, amount: int) -> dict[str, Any]:
    r = await c.post(f"/v1/accounts/{account}/debit",
                     json={"amount": amount, "reason": "x", "idempotency_key": key()})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_one_payment_intent_however_many_debits_cross_then_the_webhook_pays(
    shop: RunningApp, stand_in: StandIn, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    async with shop.client() as c:
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 100, "kind": "grant", "idempotency_key": key()})
        r = await c.put(f"/v1/accounts/{account}/auto-top-up", json=CONFIG)
        assert r.status_code == 200 and r.json()["auto_top_up"]["threshold"] == 50
        # 30 concurrent debits of 2: from 100 to 40, crossing 50 once.
        await asyncio.gather(*(debit(c, account, 2) for _ in range(30)))
        await wait_for(lambda: len(intents(stand_in, account)) == 1)
        await asyncio.sleep(1.0)  # a second request would have been sent by now
        [sent] = intents(stand_in, account)
        assert len(intents(stand_in, account)) == 1
        assert sent.headers["idempotency-key"].startswith("top-up-")
        form = sent.form
        assert (form["amount"], form["currency"], form["customer"], form["payment_method"],
                form["off_session"], form["confirm"], form["metadata[package]"]) == (
            "500", "usd", "cus_test123", "pm_card_visa", "true", "true", "starter")
        await wait_for(lambda: any(r.type == "top_up.requested" for r in receiver.got))
        requested = next(r for r in receiver.got if r.type == "top_up.requested")
        intent = requested.data["payment_intent"]
        assert (requested.data["account_id"], requested.data["amount"]) == (account, 500)

        # Stripe's webhook brings the credits, like any purchase, and arms it again.
        event = stripe_event("payment_intent.succeeded", {
            "id": intent, "object": "payment_intent", "amount": 500, "amount_received": 500,
            "currency": "usd", "metadata": {"account_id": account, "package": "starter"}})
        r = await post_stripe(c, event)
        assert r.status_code == 200 and r.json()["result"] == "fulfilled"
        assert (await c.get(f"/v1/accounts/{account}")).json()["available"] == 140
        assert await db.fetchval("SELECT status FROM top_ups WHERE payment_intent = $1",
                                 intent) == "succeeded"
        await debit(c, account, 100)  # 40: below 50 again
        await wait_for(lambda: len(intents(stand_in, account)) == 2)


async def test_three_declines_in_a_row_turn_it_off(
    shop: RunningApp, stand_in: StandIn, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    stand_in.declines = 3
    async with shop.client() as c:
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 60, "kind": "grant", "idempotency_key": key()})
        assert (await c.put(f"/v1/accounts/{account}/auto-top-up", json=CONFIG)).status_code \
            == 200
        await debit(c, account, 20)  # 40
        def failures() -> int:
            return sum(r.type == "top_up.failed" and r.data.get("account_id") == account
                       for r in receiver.got)

        for n in (1, 2, 3):
            await wait_for(lambda: len(intents(stand_in, account)) == n)  # noqa: B023
            await wait_for(lambda: failures() == n)  # noqa: B023
            await debit(c, account, 1)  # armed again after a decline: another request
        await asyncio.sleep(1.0)
        assert len(intents(stand_in, account)) == 3  # off after the third
        failed = [r.data for r in receiver.got if r.type == "top_up.failed"
                  and r.data.get("account_id") == account]
        assert [(f["declines"], f["disabled"], f["error"]) for f in failed] == [
            (1, False, "card_declined"), (2, False, "card_declined"), (3, True, "card_declined")]
        assert await db.fetchval("SELECT enabled FROM auto_top_ups WHERE account_id = $1",
                                 account) is False


async def test_null_turns_it_off_and_bad_settings_are_refused(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    async with shop.client() as c:
        url = f"/v1/accounts/{account}/auto-top-up"
        assert (await c.put(url, json={**CONFIG, "package": "gold"})).status_code == 422
        assert (await c.put(url, json={**CONFIG, "threshold": 0})).status_code == 422
        assert (await c.put(url, json=CONFIG)).status_code == 200
        r = await c.put(url, content=b"null", headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json() == {"auto_top_up": None}
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 10, "kind": "grant", "idempotency_key": key()})
        await debit(c, account, 5)
    await asyncio.sleep(0.6)
    assert intents(stand_in, account) == []


async def test_a_top_up_in_kronur_is_charged_and_credited_in_stripes_units(
    shop: RunningApp, stand_in: StandIn, account: str
) -> None:
    async with shop.client() as c:
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 60, "kind": "grant", "idempotency_key": key()})
        r = await c.put(f"/v1/accounts/{account}/auto-top-up",
                        json={**CONFIG, "package": "krona"})
        assert r.status_code == 200, r.text
        await debit(c, account, 20)  # 40: below 50
        await wait_for(lambda: len(intents(stand_in, account)) == 1)
        [sent] = intents(stand_in, account)
        assert (sent.form["amount"], sent.form["currency"]) == ("1500000", "isk")  # 15,000 kr
        [intent] = [i for i in stand_in.intents.values()
                    if i["metadata"].get("account_id") == account]
        r = await post_stripe(c, stripe_event("payment_intent.succeeded",
                                              stand_in.succeeded_intent(intent["id"])))
        assert r.json()["result"] == "fulfilled", r.text
        assert (await c.get(f"/v1/accounts/{account}")).json()["available"] == 1540
