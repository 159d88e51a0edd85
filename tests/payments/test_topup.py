"""Auto top-up with the official Stripe SDK against a local stand-in of Stripe's API that
records the exact requests: one PaymentIntent however many debits cross, credits through the
ordinary webhook, off after three declines in a row; a target bought in one payment, a
monthly limit that pauses it until the month turns."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from balance_client import AsyncBalance
from server.catalog import Package
from server.payments.dodo import DodoEvent, parse_dodo
from server.payments.events import Purchase, Unfulfilled
from server.payments.stripe import StripeEvent, parse_stripe
from server.payments.topup import quantity
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
        app_webhook_events=("top_up.requested", "top_up.failed", "top_up.limit_reached",
                            "purchase.completed", "payment.needs_review"),
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


async def available(c: httpx.AsyncClient, account: str) -> int:
    value: int = (await c.get(f"/v1/accounts/{account}")).json()["available"]
    return value


async def test_a_target_buys_the_packages_that_reach_it_in_one_payment_credited_once(
    shop: RunningApp, stand_in: StandIn, receiver: Receiver, account: str
) -> None:
    async with shop.client() as c:
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 100, "kind": "grant", "idempotency_key": key()})
        r = await c.put(f"/v1/accounts/{account}/auto-top-up",
                        json={**CONFIG, "target": 1000})
        assert r.status_code == 200, r.text
        assert r.json()["auto_top_up"] == {
            **CONFIG, "target": 1000, "monthly_limit": None,
            "currency": "usd", "spent_this_month": 0, "paused_until": None, "enabled": True}
        await debit(c, account, 61)  # 39: 961 short of 1000, so 10 packages of 100
        await wait_for(lambda: len(intents(stand_in, account)) == 1)
        [sent] = intents(stand_in, account)
        assert (sent.form["amount"], sent.form["currency"], sent.form["metadata[quantity]"],
                sent.form["metadata[package]"]) == ("5000", "usd", "10", "starter")
        await wait_for(lambda: any(r.type == "top_up.requested"
                                   and r.data["account_id"] == account for r in receiver.got))
        requested = next(r.data for r in receiver.got if r.type == "top_up.requested"
                         and r.data["account_id"] == account)
        assert (requested["quantity"], requested["amount"]) == (10, 5000)
        event = stripe_event("payment_intent.succeeded",
                             stand_in.succeeded_intent(requested["payment_intent"]))
        r = await post_stripe(c, event)
        assert r.json()["result"] == "fulfilled", r.text
        assert r.json()["transaction"]["amount"] == 1000
        assert await available(c, account) == 1039
        # The same payment again, by another event: credited once.
        again = stripe_event("payment_intent.succeeded",
                             stand_in.succeeded_intent(requested["payment_intent"]))
        assert (await post_stripe(c, again)).json()["result"] == "duplicate"
        assert await available(c, account) == 1039
        settings = (await c.get(f"/v1/accounts/{account}/settings")).json()["auto_top_up"]
        assert (settings["target"], settings["spent_this_month"]) == (1000, 5000)


async def test_a_target_beyond_the_monthly_limit_buys_what_still_fits(
    shop: RunningApp, stand_in: StandIn, receiver: Receiver, account: str
) -> None:
    async with shop.client() as c:
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 100, "kind": "grant", "idempotency_key": key()})
        r = await c.put(f"/v1/accounts/{account}/auto-top-up",
                        json={**CONFIG, "target": 1000, "monthly_limit": 1500})
        assert r.status_code == 200, r.text
        await debit(c, account, 61)  # 10 packages would reach the target; 3 fit the month
        await wait_for(lambda: len(intents(stand_in, account)) == 1)
        [sent] = intents(stand_in, account)
        assert (sent.form["amount"], sent.form["metadata[quantity]"]) == ("1500", "3")
        await asyncio.sleep(0.5)
        assert not any(r.type == "top_up.limit_reached" and r.data["account_id"] == account
                       for r in receiver.got)


async def test_a_retry_charges_what_the_first_try_asked_though_balance_and_target_moved(
    shop: RunningApp, stand_in: StandIn, db: asyncpg.Pool, account: str
) -> None:
    async with shop.client() as c:
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 100, "kind": "grant", "idempotency_key": key()})
        await c.put(f"/v1/accounts/{account}/auto-top-up", json={**CONFIG, "target": 400})
        stand_in.failing = True
        try:
            await debit(c, account, 60)  # 40: 4 packages reach 400
            await wait_for(lambda: len(intents(stand_in, account)) >= 1)
            # Stripe unreachable: the request waits for its retry. Meanwhile the balance
            # falls and the target rises; neither changes the request already made.
            await wait_for_row(db, "SELECT error FROM top_ups WHERE account_id = $1",
                               account, "APIError")
            await debit(c, account, 30)
            r = await c.put(f"/v1/accounts/{account}/auto-top-up",
                            json={**CONFIG, "target": 2000})
            assert r.status_code == 200
        finally:
            stand_in.failing = False
        tried = len(intents(stand_in, account))
        await db.execute("UPDATE top_ups SET next_attempt_at = now() WHERE account_id = $1",
                         account)
        await wait_for(lambda: any(stand_in.answered.get(s.headers["idempotency-key"])
                                   for s in intents(stand_in, account)[tried:]))
        forms = [s.form for s in intents(stand_in, account)]
        assert all(f == forms[0] for f in forms)  # the stand-in refuses a key reused otherwise
        assert (forms[0]["amount"], forms[0]["metadata[quantity]"]) == ("2000", "4")
        await wait_for_row(db, "SELECT status FROM top_ups WHERE account_id = $1", account,
                           "created")


async def wait_for_row(db: asyncpg.Pool, sql: str, account: str, expected: Any) -> None:
    deadline = time.monotonic() + 5.0
    while await db.fetchval(sql, account) != expected:
        assert time.monotonic() < deadline, f"{sql}: not {expected!r} within the deadline"
        await asyncio.sleep(0.02)


async def test_paying_less_than_the_packages_asked_for_credits_nothing_and_needs_review(
    shop: RunningApp, receiver: Receiver, account: str
) -> None:
    async with shop.client() as c:
        def paid(amount: int, quantity: str) -> bytes:
            return stripe_event("payment_intent.succeeded", {
                "id": f"pi_test_{key()[:12]}", "object": "payment_intent", "amount": amount,
                "amount_received": amount, "currency": "usd",
                "metadata": {"account_id": account, "package": "starter",
                             "quantity": quantity}})

        # 3 packages cost 1500: 1499 buys neither 3 nor 2 (what was asked and what was paid
        # disagree: an operator decides), and metadata cannot buy more than was paid for.
        r = await post_stripe(c, paid(1499, "3"))
        assert r.json()["result"] == "needs_review", r.text
        assert "3 × package 'starter' costs 1500" in r.json()["problem"]
        for bad in ("0", "1001", "2.0", "-1", "x"):
            r = await post_stripe(c, paid(100_000, bad))
            assert r.json()["result"] == "needs_review", bad
            assert "metadata quantity" in r.json()["problem"]
        assert await available(c, account) == 0
        r = await post_stripe(c, paid(1500, "3"))
        assert r.json()["result"] == "fulfilled" and r.json()["transaction"]["amount"] == 300
        assert await available(c, account) == 300


async def test_a_monthly_limit_stops_a_top_up_once_then_the_next_month_arms_it_again(
    shop: RunningApp, stand_in: StandIn, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    async with shop.client() as c:
        await c.post(f"/v1/accounts/{account}/credit",
                     json={"amount": 100, "kind": "grant", "idempotency_key": key()})
        r = await c.put(f"/v1/accounts/{account}/auto-top-up",
                        json={**CONFIG, "monthly_limit": 1000})  # two packages of 500
        assert r.json()["auto_top_up"]["monthly_limit"] == 1000
        paid: set[str] = set()
        for n in (1, 2):
            await debit(c, account, 100 if n > 1 else 60)  # 40: below 50
            await wait_for(lambda: len(intents(stand_in, account)) == n)  # noqa: B023
            await wait_for_row(db, "SELECT count(*) FROM top_ups WHERE account_id = $1"
                               " AND status = 'created'", account, 1)
            intent = next(i for i in stand_in.intents.values()
                          if i["metadata"].get("account_id") == account and i["id"] not in paid)
            paid.add(intent["id"])
            r = await post_stripe(c, stripe_event("payment_intent.succeeded",
                                                  stand_in.succeeded_intent(intent["id"])))
            assert r.json()["result"] == "fulfilled", r.text
        assert await available(c, account) == 140
        await debit(c, account, 100)  # 40: a third package would make 1500 > 1000

        def told() -> list[dict[str, Any]]:
            return [r.data for r in receiver.got if r.type == "top_up.limit_reached"
                    and r.data["account_id"] == account]

        await wait_for(lambda: len(told()) == 1)
        for _ in range(3):  # paused: below the threshold, debits ask for nothing
            await debit(c, account, 5)
        await asyncio.sleep(1.0)
        assert len(told()) == 1 and len(intents(stand_in, account)) == 2
        [limit] = told()
        resets = await db.fetchval("SELECT balance.balance__spend_end("
                                   "balance.balance__spend_window('month'), 'month')")
        assert {k: v for k, v in limit.items() if k != "top_up_id"} == {
            "account_id": account, "package": "starter", "quantity": 1, "amount": 500,
            "currency": "usd", "monthly_limit": 1000, "spent_this_month": 1000,
            "resets_at": resets.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        assert not any(r.type == "top_up.failed" and r.data["account_id"] == account
                       for r in receiver.got)
        row = await db.fetchrow("SELECT t.status, t.error, a.declines, a.enabled FROM top_ups t"
                                " JOIN auto_top_ups a USING (account_id)"
                                " WHERE t.account_id = $1 AND t.id = $2::uuid", account,
                                limit["top_up_id"])
        assert row is not None
        assert tuple(row) == ("failed", "monthly_limit_reached", 0, True)
        settings = (await c.get(f"/v1/accounts/{account}/settings")).json()["auto_top_up"]
        assert (settings["spent_this_month"], settings["paused_until"]) == (
            1000, limit["resets_at"])

        # The month turns: the pause ends in the past and this month's spend is last month's.
        await db.execute("UPDATE top_ups SET priced_at = priced_at - interval '40 days'"
                         " WHERE account_id = $1", account)
        await db.execute("UPDATE auto_top_ups SET paused_until = now() - interval '1 second'"
                         " WHERE account_id = $1", account)
        await wait_for_row(db, "SELECT top_up_below FROM accounts WHERE account_id = $1",
                           account, 50)
        settings = (await c.get(f"/v1/accounts/{account}/settings")).json()["auto_top_up"]
        assert (settings["spent_this_month"], settings["paused_until"]) == (0, None)
        await debit(c, account, 1)  # a movement below the threshold: a top-up again
        await wait_for(lambda: len(intents(stand_in, account)) == 3)


async def test_bad_targets_and_limits_are_refused_and_write_nothing(
    shop: RunningApp, db: asyncpg.Pool, account: str
) -> None:
    async with shop.client() as c:
        url = f"/v1/accounts/{account}/auto-top-up"
        for bad in ({"target": 50}, {"target": 49}, {"target": -5}, {"target": 100.5},
                    {"target": "100"}, {"target": 10**12 + 1}, {"monthly_limit": 0},
                    {"monthly_limit": -1}, {"monthly_limit": 2.5}, {"monthly_limit": "1000"},
                    {"monthly_limit": 499}):  # less than one package
            r = await c.put(url, json={**CONFIG, **bad})
            assert r.status_code == 422, (bad, r.text)
        assert await db.fetchval("SELECT count(*) FROM auto_top_ups WHERE account_id = $1",
                                 account) == 0
        assert (await c.get(f"/v1/accounts/{account}/settings")).json()["auto_top_up"] is None


def test_the_quantity_reaches_the_target_within_its_bounds() -> None:
    starter = Package(credits=100, price={"usd": 500})
    assert quantity(starter, None, 39) == 1  # no target: one package
    assert quantity(starter, 1000, None) == 1  # requested before targets existed
    assert quantity(starter, 1000, 39) == 10  # 961 short: ceil(9.61)
    assert quantity(starter, 1000, 900) == 1
    assert quantity(starter, 1000, 950) == 1  # at least one
    assert quantity(starter, 1000, -500) == 15  # a debt is made up too
    assert quantity(starter, 10**12, 0) == 1000  # at most 1000: it falls short of the target
    whale = Package(credits=10**10, price={"usd": 500})
    assert quantity(whale, 10**12, -10**12) == 100  # one payment's credits stay within 10^12


async def test_the_python_sdk_sets_a_target_and_a_monthly_limit(
    shop: RunningApp, account: str
) -> None:
    async with AsyncBalance(shop.base_url, shop.service_key, deadline=10) as balance:
        result = await balance.set_auto_top_up(
            account, package="starter", threshold=50, stripe_customer="cus_test123",
            stripe_payment_method="pm_card_visa", target=1000, monthly_limit=5000)
        settings = await balance.get_settings(account)
    assert result.auto_top_up is not None and settings.auto_top_up == result.auto_top_up
    top = result.auto_top_up
    assert (top.target, top.monthly_limit, top.currency, top.spent_this_month,
            top.paused_until) == (1000, 5000, "usd", 0, None)


def test_both_providers_carry_the_metadata_quantity_into_the_purchase() -> None:
    def stripe_paid(metadata: dict[str, str]) -> object:
        return parse_stripe(msgspec.convert({
            "id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {
                "id": "pi_1", "amount": 1500, "currency": "usd", "metadata": metadata}}},
            StripeEvent))

    def dodo_paid(metadata: dict[str, str]) -> object:
        return parse_dodo(DodoEvent("payment.succeeded", {
            "payment_id": "pay_1", "total_amount": 1500, "currency": "USD",
            "metadata": metadata}), "msg_1")

    for paid in (stripe_paid, dodo_paid):
        bought = paid({"account_id": "u1", "package": "starter", "quantity": "3"})
        assert isinstance(bought, Purchase) and bought.quantity == 3
        one = paid({"account_id": "u1", "package": "starter"})
        assert isinstance(one, Purchase) and one.quantity == 1
        bad = paid({"account_id": "u1", "package": "starter", "quantity": "three"})
        assert isinstance(bad, Unfulfilled) and bad.quantity is None
        assert "metadata quantity" in bad.problem
