"""Plans that follow the paid subscription (issue 29): Stripe's and Dodo's subscription events,
signed by their own libraries, through the real webhook routes of real servers, against a real
PostgreSQL; checkout through the official SDKs against the stand-in (tests/payments/standin.py).

The invariant that a plan's events never touch bought credits is checked (the purchase
grant's `remaining`) after the steps that move allowance in every test that buys credits.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from server.auth import mint_token
from server.config import standard_webhooks_key
from tests.conftest import RunningApp, StartApp
from tests.payments.standin import StandIn
from tests.payments.test_webhooks import (
    DODO_SECRET,
    STRIPE_SECRET,
    assert_reconciled,
    dodo_event,
    post_dodo,
    post_stripe,
    session,
    uid,
)
from tests.receiver import SECRET, Receiver, serving

RETURN = "https://app.example/"
DAY = 86_400
CATALOG = {
    "prices": {"generate_image": 5},
    "packages": {"c100": {"credits": 100, "price": {"usd": 1}}},
    "plans": {
        "pro": {"allowance": 1000, "rollover": 10, "stripe_price": "price_pro",
                "dodo_product": "pdt_pro", "limits": {"generate_image": 50}},
        "max": {"allowance": 3000, "rollover": 10, "stripe_price": "price_max",
                "dodo_product": "pdt_max"},
        "basic": {"allowance": 100},  # assigned by the backend, renewed by the calendar
    },
}
PLAN_EVENTS = ("plan.renewed", "plan.past_due", "plan.canceled")
Json = dict[str, Any]


async def start_subscriptions_app(start_app: StartApp, catalog: str, stand_in: StandIn,
                                  receiver: Receiver) -> RunningApp:
    return await start_app(
        catalog_file=catalog, stripe_webhook_secret=STRIPE_SECRET,
        dodo_webhook_key=standard_webhooks_key("BALANCE_DODO_WEBHOOK_SECRET", DODO_SECRET),
        stripe_api_key="sk_test_standin", stripe_api_base=stand_in.url,
        dodo_api_key="dodo_test_standin", dodo_api_base=stand_in.url,
        checkout_return_urls=(RETURN,), app_webhook_url=receiver.url,
        app_webhook_secret=SECRET, app_webhook_events=PLAN_EVENTS)


@pytest.fixture(scope="module")
async def hooks() -> AsyncIterator[Receiver]:
    """The app's webhook endpoint, for the module's servers (which outlive one test)."""
    async with serving() as rec:
        yield rec


@pytest.fixture(scope="module")
async def subs(start_app: StartApp, stand_in: StandIn, hooks: Receiver,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningApp]:
    catalog = tmp_path_factory.mktemp("subscriptions") / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    app = await start_subscriptions_app(start_app, str(catalog), stand_in, hooks)
    yield app
    # Stopped with its module: its jobs end other tests' subscriptions otherwise.
    await app.stop()


@pytest.fixture
async def http(subs: RunningApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=subs.base_url, timeout=30) as c:
        yield c


@pytest.fixture
async def backend(subs: RunningApp) -> AsyncIterator[httpx.AsyncClient]:
    async with subs.client() as c:
        yield c


@pytest.fixture
def account() -> str:
    return f"subscriber-{uuid.uuid4().hex[:10]}"


def event(kind: str, obj: Json, created: int | None = None) -> bytes:
    """A Stripe event made at `created` (now by default): the order of a subscription's news."""
    return json.dumps({"id": uid("evt"), "object": "event", "type": kind,
                       "created": int(time.time()) if created is None else created,
                       "livemode": False, "data": {"object": obj}}).encode()


async def stripe(http: httpx.AsyncClient, kind: str, obj: Json,
                 created: int | None = None) -> Json:
    r = await post_stripe(http, event(kind, obj, created))
    assert r.status_code == 200, r.text
    answer: Json = r.json()
    return answer


async def subscribe(backend: httpx.AsyncClient, stand_in: StandIn, account: str,
                    plan: str = "pro") -> str:
    """Checkout for `plan` through the Stripe SDK: the stand-in's subscription id."""
    r = await backend.post(f"/v1/accounts/{account}/checkout", json={
        "provider": "stripe", "plan": plan, "success_url": RETURN + "ok",
        "idempotency_key": uid("checkout")})
    assert r.status_code == 201, r.text
    sub: str = stand_in.sessions[r.json()["session_id"]]["subscription"]
    return sub


async def buy(http: httpx.AsyncClient, account: str) -> None:
    """100 bought credits: what no plan event may touch."""
    r = await post_stripe(http, event("checkout.session.completed",
                                      session(account, "100", uid("pi"))))
    assert r.json()["result"] == "fulfilled"


async def bought_left(db: asyncpg.Pool, account: str) -> int:
    """What is left of the account's bought credits (its purchase grants)."""
    left: int = await db.fetchval(
        "SELECT COALESCE(sum(remaining), 0) FROM credit_lots WHERE account_id = $1"
        " AND kind = 'purchase'", account)
    return left


async def plan_of(backend: httpx.AsyncClient, account: str) -> Json:
    r = await backend.get(f"/v1/accounts/{account}/plan")
    assert r.status_code == 200, r.text
    body: Json = r.json()
    return body


async def debit(backend: httpx.AsyncClient, account: str, amount: int) -> httpx.Response:
    return await backend.post(f"/v1/accounts/{account}/debit", json={
        "amount": amount, "reason": "work", "idempotency_key": uid("debit")})


async def ledger(backend: httpx.AsyncClient, account: str) -> list[tuple[str, int]]:
    r = await backend.get(f"/v1/accounts/{account}/transactions", params={"limit": 200})
    return [(t["kind"], t["amount"]) for t in reversed(r.json()["transactions"])]


async def plan_events(db: asyncpg.Pool, account: str) -> list[tuple[str, Json]]:
    rows = await db.fetch("SELECT type, data FROM events WHERE account_id = $1"
                          " AND type LIKE 'plan.%' ORDER BY id", account)
    return [(row["type"], json.loads(row["data"])) for row in rows]


def iso(seconds: int) -> str:
    """A time as Dodo sends one."""
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def ts(seconds: int) -> str:
    """A time as our API answers one."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- Stripe


async def test_checkout_starts_the_subscription_and_its_invoices_drive_the_plan(
    subs: RunningApp, http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool,
    stand_in: StandIn, account: str,
) -> None:
    """The sequence of the issue's proof: a paid first invoice, a renewal that fails, its
    recovery; redeliveries and late failures change nothing; bought credits stay whole."""
    await buy(http, account)
    before = len(stand_in.seen)
    sub = await subscribe(backend, stand_in, account)
    (seen,) = stand_in.seen[before:]
    assert seen.form == {
        "mode": "subscription", "line_items[0][price]": "price_pro",
        "line_items[0][quantity]": "1", "success_url": RETURN + "ok",
        "client_reference_id": account, "payment_method_collection": "always",
        "metadata[account_id]": account, "metadata[plan]": "pro",
        "subscription_data[metadata][account_id]": account,
        "subscription_data[metadata][plan]": "pro"}
    now = int(time.time())
    start, end, end2 = now - 60, now + 30 * DAY, now + 61 * DAY

    # Stripe's order: the subscription (incomplete: news of nothing paid, so it changes
    # nothing and makes no account), then its first invoice paid.
    created = await stripe(http, "customer.subscription.created",
                           stand_in.subscription(sub, "incomplete", start=start, end=end))
    assert created["result"] == "ignored"
    assert (await plan_of(backend, account))["plan"] is None
    first = stand_in.invoice(sub, "subscription_create", start, end)
    started = await stripe(http, "invoice.paid", first)
    assert (started["result"], started["plan"], started["allowance"]) == ("started", "pro", 1000)
    for kind in ("invoice.paid", "invoice.payment_succeeded"):  # a redelivery, its twin
        assert (await stripe(http, kind, first))["result"] == "duplicate"
    dashboard = await plan_of(backend, account)
    assert (dashboard["plan"], dashboard["status"], dashboard["allowance_remaining"],
            dashboard["period_start"], dashboard["period_end"]) == (
        "pro", "active", 1000, ts(start),
        ts(end))
    assert dashboard["subscription"] == {"provider": "stripe", "id": sub, "status": "active",
                                         "cancel_at": None}
    # The card it was paid with is kept for auto top-up.
    await stripe(http, "customer.subscription.updated",
                 stand_in.subscription(sub, start=start, end=end))
    card = await db.fetchrow("SELECT * FROM saved_cards WHERE account_id = $1", account)
    assert card is not None
    assert (card["stripe_customer"], card["stripe_payment_method"]) == (
        stand_in.subscriptions[sub]["customer"], stand_in.subscriptions[sub]["payment_method"])
    # So auto top-up needs no wiring: without a customer and card it charges that one.
    r = await backend.put(f"/v1/accounts/{account}/auto-top-up",
                          json={"package": "c100", "threshold": 5})
    assert r.status_code == 200, r.text
    assert (r.json()["auto_top_up"]["stripe_customer"],
            r.json()["auto_top_up"]["stripe_payment_method"]) == (
        card["stripe_customer"], card["stripe_payment_method"])
    r = await backend.put(f"/v1/accounts/{account}-new/auto-top-up",
                          json={"package": "c100", "threshold": 5})
    assert r.status_code == 422 and "saved a card" in r.json()["message"]
    assert await db.fetchval("SELECT count(*) FROM auto_top_ups WHERE account_id = $1",
                             f"{account}-new") == 0
    r = await backend.put(f"/v1/accounts/{account}/auto-top-up", json={"package": "c100",
                          "threshold": 5, "stripe_customer": "cus_only"})
    assert r.status_code == 422 and "give both" in r.json()["message"]
    off = await backend.put(f"/v1/accounts/{account}/auto-top-up", content=b"null",
                            headers={"Content-Type": "application/json"})
    assert off.status_code == 200 and off.json() == {"auto_top_up": None}

    assert (await debit(backend, account, 950)).status_code == 200  # allowance goes first
    assert await bought_left(db, account) == 100

    token = mint_token(subs.settings.token_secret, account, 600)[0]
    async with connect(f"{subs.ws_url}?token={token}") as ws:
        async with asyncio.timeout(5):
            assert json.loads(await ws.recv())["balance"] == 150
        # The renewal's payment fails: past due, told once, pushed.
        renewal = stand_in.invoice(sub, "subscription_cycle", end, end2)
        failed = await stripe(http, "invoice.payment_failed", renewal)
        assert (failed["result"], failed["status"]) == ("past_due", "past_due")
        async with asyncio.timeout(5):
            frame = json.loads(await ws.recv())
    assert (frame["balance"], frame["change"]["kind"], frame["change"]["amount"]) == (
        150, "plan", 0)
    assert frame["change"]["reason"].startswith("plan past due")
    assert (await stripe(http, "invoice.payment_failed", renewal))["result"] == \
        "nothing_to_change"
    later = await stripe(http, "customer.subscription.updated",
                         stand_in.subscription(sub, "past_due", start=start, end=end))
    assert later["result"] == "nothing_to_change"
    dashboard = await plan_of(backend, account)
    assert (dashboard["plan"], dashboard["status"]) == ("pro", "past_due")
    # What is left stays spendable; no allowance comes.
    assert (await debit(backend, account, 30)).status_code == 200
    assert (await plan_of(backend, account))["allowance_remaining"] == 20

    # The retried invoice is paid: the recovery grants once.
    recovered = await stripe(http, "invoice.paid", renewal)
    assert (recovered["result"], recovered["status"]) == ("renewed", "active")
    assert (await stripe(http, "invoice.paid", renewal))["result"] == "duplicate"
    assert (await stripe(http, "invoice.payment_failed", renewal))["result"] == \
        "nothing_to_change"
    dashboard = await plan_of(backend, account)
    assert (dashboard["status"], dashboard["allowance_remaining"], dashboard["period_end"]) == (
        "active", 1010, ts(end2))  # 10 rolled over
    assert await ledger(backend, account) == [
        ("purchase", 100), ("allowance", 1000), ("usage", -950), ("usage", -30),
        ("expiry", -10), ("allowance", 1000)]
    assert await bought_left(db, account) == 100
    assert [(t, d.get("first"), d.get("payment_id")) for t, d in
            await plan_events(db, account)] == [
        ("plan.renewed", True, first["id"]), ("plan.past_due", None, renewal["id"]),
        ("plan.renewed", False, renewal["id"])]
    await assert_reconciled(db, account)


async def test_news_in_any_order_applies_the_newest_and_grants_each_period_once(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, stand_in: StandIn,
    account: str,
) -> None:
    sub = await subscribe(backend, stand_in, account)
    now = int(time.time())
    start, end = now - 60, now + 30 * DAY
    # The first invoice before the subscription's own creation event.
    paid = await stripe(http, "invoice.paid", stand_in.invoice(sub, "subscription_create",
                                                               start, end), created=now)
    assert paid["result"] == "started"
    old = await stripe(http, "customer.subscription.created",
                       stand_in.subscription(sub, "incomplete", start=start, end=end),
                       created=now - 5)
    assert old["result"] == "nothing_to_change"
    # past_due made after an `active` that is delivered late: past_due stays.
    late = await stripe(http, "customer.subscription.updated",
                        stand_in.subscription(sub, "past_due", start=start, end=end),
                        created=now + 10)
    assert late["result"] == "past_due"
    stale = await stripe(http, "customer.subscription.updated",
                         stand_in.subscription(sub, "active", start=start, end=end),
                         created=now + 5)
    assert stale["result"] == "nothing_to_change"
    assert (await plan_of(backend, account))["status"] == "past_due"
    # A period that ended grants nothing, however late its invoice comes.
    ended = await stripe(http, "invoice.paid", stand_in.invoice(
        sub, "subscription_cycle", now - 60 * DAY, now - 30 * DAY))
    assert ended["result"] == "needs_review" and "has ended" in ended["problem"]
    assert await ledger(backend, account) == [("allowance", 1000)]
    await assert_reconciled(db, account)


async def test_a_plan_change_at_the_provider_never_touches_bought_credits(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, stand_in: StandIn,
    account: str,
) -> None:
    await buy(http, account)
    sub = await subscribe(backend, stand_in, account)
    now = int(time.time())
    start, end = now - 60, now + 30 * DAY
    await stripe(http, "invoice.paid", stand_in.invoice(sub, "subscription_create", start, end))
    assert (await debit(backend, account, 200)).status_code == 200
    # Upgrade: the rest of the new plan's allowance for this period, now.
    up = await stripe(http, "customer.subscription.updated",
                      stand_in.subscription(sub, price="price_max", start=start, end=end))
    assert (up["result"], up["plan"]) == ("plan_changed", "max")
    proration = await stripe(http, "invoice.paid", stand_in.invoice(
        sub, "subscription_update", start, end, price="price_max", proration=True))
    assert proration["result"] == "ignored"
    assert (await plan_of(backend, account))["allowance_remaining"] == 2800
    assert await bought_left(db, account) == 100
    # Downgrade: the excess allowance expires; the bought credits stay.
    down = await stripe(http, "customer.subscription.updated",
                        stand_in.subscription(sub, start=start, end=end))
    assert (down["result"], down["plan"]) == ("plan_changed", "pro")
    assert (await plan_of(backend, account))["allowance_remaining"] == 800
    assert await bought_left(db, account) == 100
    assert await ledger(backend, account) == [
        ("purchase", 100), ("allowance", 1000), ("usage", -200), ("allowance", 2000),
        ("expiry", -800), ("expiry", -1200)]  # grant by grant, in spending order
    # The backend cannot move a plan the provider drives.
    r = await backend.put(f"/v1/accounts/{account}/plan",
                          json={"plan": "basic", "idempotency_key": uid("plan")})
    assert r.status_code == 422 and sub in r.json()["message"]
    assert (await plan_of(backend, account))["plan"] == "pro"
    await assert_reconciled(db, account)


async def test_cancellation_at_period_end_ends_the_plan_then_and_an_immediate_one_now(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, stand_in: StandIn,
    account: str,
) -> None:
    sub = await subscribe(backend, stand_in, account)
    await buy(http, account)
    now = int(time.time())
    end = now + 3
    await stripe(http, "invoice.paid", stand_in.invoice(sub, "subscription_create", now - 60,
                                                        end))
    scheduled = await stripe(http, "customer.subscription.updated", stand_in.subscription(
        sub, start=now - 60, end=end, cancel_at_period_end=True))
    assert scheduled["cancel_at"] == ts(end)
    assert (await plan_of(backend, account))["subscription"]["cancel_at"] == \
        scheduled["cancel_at"]
    deadline = time.monotonic() + 15
    while (await plan_of(backend, account))["plan"] is not None:
        assert time.monotonic() < deadline, "the plan did not end at its period's end"
        await asyncio.sleep(0.2)
    assert await ledger(backend, account) == [("purchase", 100), ("allowance", 1000),
                                              ("expiry", -1000)]
    assert await bought_left(db, account) == 100
    assert [t for t, _ in await plan_events(db, account)] == ["plan.renewed", "plan.canceled"]
    deleted = await stripe(http, "customer.subscription.deleted", stand_in.subscription(
        sub, "canceled", start=now - 60, end=end))
    assert deleted["result"] == "nothing_to_change"
    # Paid after it ended: the money came, nothing is granted, so an operator is told.
    late = await stripe(http, "invoice.paid", stand_in.invoice(
        sub, "subscription_cycle", end, end + 30 * DAY))
    assert late["result"] == "needs_review" and "after it ended" in late["problem"]

    other = f"{account}-now"
    sub2 = await subscribe(backend, stand_in, other, plan="max")
    await stripe(http, "invoice.paid", stand_in.invoice(sub2, "subscription_create", now - 60,
                                                        now + 30 * DAY))
    gone = await stripe(http, "customer.subscription.deleted",
                        stand_in.subscription(sub2, "canceled", start=now - 60, end=end))
    assert gone["result"] == "canceled"
    assert (await plan_of(backend, other))["plan"] is None
    assert await ledger(backend, other) == [("allowance", 3000), ("expiry", -3000)]
    await assert_reconciled(db, account, other)


async def test_one_subscription_holds_the_plan_and_a_second_supersedes_it(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, stand_in: StandIn,
    account: str,
) -> None:
    first = await subscribe(backend, stand_in, account)
    await buy(http, account)
    now = int(time.time())
    await stripe(http, "invoice.paid", stand_in.invoice(first, "subscription_create", now - 60,
                                                        now + 30 * DAY))
    # The plan's own checkout refuses a second subscription: it is changed at the provider.
    r = await backend.post(f"/v1/accounts/{account}/checkout", json={
        "provider": "stripe", "plan": "max", "success_url": RETURN + "ok",
        "idempotency_key": uid("checkout")})
    assert r.status_code == 422 and first in r.json()["message"]
    # One made elsewhere naming the account takes it over; the first is superseded, and its
    # next payment goes to review instead of taking the plan back.
    second = await subscribe(backend, stand_in, f"{account}-elsewhere", plan="max")
    taken = await stripe(http, "invoice.paid", stand_in.invoice(
        second, "subscription_create", now - 30, now + 30 * DAY,
        metadata={"account_id": account}))
    assert (taken["result"], taken["plan"]) == ("started", "max")
    back = await stripe(http, "invoice.paid", stand_in.invoice(
        first, "subscription_cycle", now + 30 * DAY, now + 60 * DAY))
    assert back["result"] == "needs_review"
    dashboard = await plan_of(backend, account)
    assert (dashboard["plan"], dashboard["subscription"]["id"]) == ("max", second)
    assert await ledger(backend, account) == [
        ("purchase", 100), ("allowance", 1000), ("expiry", -1000), ("allowance", 3000)]
    assert await bought_left(db, account) == 100
    await assert_reconciled(db, account)


async def test_one_grant_when_two_instances_receive_the_invoice_at_once(
    start_app: StartApp, subs: RunningApp, http: httpx.AsyncClient, backend: httpx.AsyncClient,
    db: asyncpg.Pool, stand_in: StandIn, hooks: Receiver, account: str,
) -> None:
    second = await start_subscriptions_app(start_app, subs.settings.catalog_file or "",
                                           stand_in, hooks)
    try:
        sub = await subscribe(backend, stand_in, account)
        now = int(time.time())
        payload = event("invoice.paid", stand_in.invoice(sub, "subscription_create", now - 60,
                                                         now + 30 * DAY))
        async with httpx.AsyncClient(base_url=second.base_url, timeout=30) as other:
            answers = await asyncio.gather(*(post_stripe(c, payload)
                                             for c in (http, other) * 4))
        assert sorted(a.json()["result"] for a in answers) == ["duplicate"] * 7 + ["started"]
        assert await ledger(backend, account) == [("allowance", 1000)]
    finally:
        await second.stop()


async def test_what_is_not_one_of_our_plans(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, stand_in: StandIn,
    account: str,
) -> None:
    sub = await subscribe(backend, stand_in, account)
    now = int(time.time())
    # Another product's subscription: ignored.
    other = await stripe(http, "invoice.paid", stand_in.invoice(
        sub, "subscription_create", now - 60, now + DAY, price="price_starter"))
    assert other["result"] == "ignored"
    # One of our plans, but its subscription names no account: for an operator.
    review = await stripe(http, "invoice.paid", stand_in.invoice(
        sub, "subscription_create", now - 60, now + DAY, metadata={}))
    assert review["result"] == "needs_review"
    assert "names no account" in review["problem"]
    # The invoice's own PaymentIntent carries no metadata of ours: it buys no credits.
    intent = {"id": uid("pi"), "object": "payment_intent", "amount": 2000,
              "amount_received": 2000, "currency": "usd", "status": "succeeded",
              "metadata": {}, "description": "Subscription creation"}
    assert (await stripe(http, "payment_intent.succeeded", intent))["result"] == "ignored"
    assert await ledger(backend, account) == []
    assert await db.fetchval("SELECT count(*) FROM webhook_events_unfulfilled"
                             " WHERE payment_id = $1", intent["id"]) == 0


# ---------------------------------------------------------------- Dodo


def dodo_subscription(sub: str, account: str, status: str, start: int, end: int, *,
                      product: str = "pdt_pro", payment_id: str | None = None,
                      cancel_at_next_billing_date: bool = False) -> Json:
    """The Subscription payload of Dodo's subscription.* events."""
    return {"payload_type": "Subscription", "subscription_id": sub, "product_id": product,
            "status": status, "metadata": {"account_id": account},
            "customer": {"customer_id": f"cus_{sub}", "email": "a@b.example", "name": "A"},
            "previous_billing_date": iso(start), "next_billing_date": iso(end),
            "cancel_at_next_billing_date": cancel_at_next_billing_date,
            "payment_id": payment_id, "recurring_pre_tax_amount": 2000, "currency": "USD",
            "quantity": 1}


def dodo_at(kind: str, data: Json, at: int) -> bytes:
    return json.dumps({"business_id": "bus_test", "type": kind, "timestamp": iso(at),
                       "data": data}).encode()


async def dodo(http: httpx.AsyncClient, payload: bytes) -> Json:
    r = await post_dodo(http, payload)
    assert r.status_code == 200, r.text
    answer: Json = r.json()
    return answer


async def test_a_dodo_subscription_renews_lapses_recovers_changes_and_expires(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, stand_in: StandIn,
    account: str,
) -> None:
    r = await backend.post(f"/v1/accounts/{account}/checkout", json={
        "provider": "dodo", "plan": "pro", "success_url": RETURN + "ok",
        "idempotency_key": uid("checkout")})
    assert r.status_code == 201, r.text
    assert (r.json()["plan"], r.json()["credits"], r.json()["amount"]) == ("pro", 1000, None)
    sent = stand_in.seen[-1].json
    assert sent["product_cart"] == [{"product_id": "pdt_pro", "quantity": 1}]
    assert sent["metadata"] == {"account_id": account, "plan": "pro"}
    await buy(http, account)

    sub, now = uid("sub"), int(time.time())
    p1, p2, p3 = (now - 60, now + 30 * DAY), (now + 30 * DAY, now + 60 * DAY), \
        (now + 60 * DAY, now + 90 * DAY)
    active = dodo_at("subscription.active", dodo_subscription(sub, account, "active", *p1), now)
    assert (await dodo(http, active))["result"] == "started"
    assert (await dodo(http, active))["result"] == "duplicate"
    renewed = dodo_at("subscription.renewed", dodo_subscription(
        sub, account, "active", *p2, payment_id=uid("pay")), now + 1)
    assert (await dodo(http, renewed))["result"] == "renewed"
    assert (await dodo(http, renewed))["result"] == "duplicate"
    # The renewal's payment is the plan's, not credits.
    payment = dodo_event("payment.succeeded", {
        "payload_type": "Payment", "payment_id": uid("pay"), "subscription_id": sub,
        "total_amount": 2000, "currency": "USD", "status": "succeeded",
        "metadata": {"account_id": account}})
    assert (await dodo(http, payment))["result"] == "ignored"
    plan_payment = dodo_event("payment.succeeded", {  # a plan checkout's, however it comes
        "payload_type": "Payment", "payment_id": uid("pay"), "total_amount": 2000,
        "currency": "USD", "status": "succeeded",
        "metadata": {"account_id": account, "plan": "pro"}})
    assert (await dodo(http, plan_payment))["result"] == "ignored"
    on_hold = dodo_at("subscription.on_hold", dodo_subscription(sub, account, "on_hold", *p2),
                      now + 2)
    assert (await dodo(http, on_hold))["result"] == "past_due"
    # An `active` made before the hold, delivered after it: the hold stands.
    late = dodo_at("subscription.updated", dodo_subscription(sub, account, "active", *p2),
                   now + 1)
    assert (await dodo(http, late))["result"] == "nothing_to_change"
    assert (await plan_of(backend, account))["status"] == "past_due"
    recovery = dodo_at("subscription.renewed", dodo_subscription(
        sub, account, "active", *p3, payment_id=uid("pay")), now + 3)
    assert (await dodo(http, recovery))["result"] == "renewed"
    assert (await plan_of(backend, account))["status"] == "active"
    changed = dodo_at("subscription.plan_changed", dodo_subscription(
        sub, account, "active", *p3, product="pdt_max"), now + 4)
    assert (await dodo(http, changed))["result"] == "plan_changed"
    cancel = dodo_at("subscription.updated", dodo_subscription(
        sub, account, "active", *p3, product="pdt_max", cancel_at_next_billing_date=True),
        now + 5)
    assert (await dodo(http, cancel))["cancel_at"] == ts(p3[1])
    expired = dodo_at("subscription.expired", dodo_subscription(sub, account, "expired", *p3,
                                                                product="pdt_max"), now + 6)
    assert (await dodo(http, expired))["result"] == "canceled"
    assert (await plan_of(backend, account))["plan"] is None
    # Each renewal keeps the rollover (10) of what is left; the upgrade adds max's
    # difference; the end takes every allowance grant, one row per grant.
    assert await ledger(backend, account) == [
        ("purchase", 100), ("allowance", 1000), ("expiry", -990), ("allowance", 1000),
        ("expiry", -10), ("expiry", -990), ("allowance", 1000), ("allowance", 2000),
        ("expiry", -10), ("expiry", -1000), ("expiry", -2000)]
    assert await bought_left(db, account) == 100
    await assert_reconciled(db, account)


# ---------------------------------------------------------------- checkout


async def test_a_plan_checkout_asks_for_a_plan_the_provider_sells(
    backend: httpx.AsyncClient, account: str,
) -> None:
    async def checkout(**body: Any) -> httpx.Response:
        return await backend.post(f"/v1/accounts/{account}/checkout", json={
            "provider": "stripe", "success_url": RETURN, "idempotency_key": uid("k"), **body})

    r = await checkout(plan="basic")
    assert r.status_code == 422 and "stripe_price" in r.json()["message"]
    r = await checkout(plan="nope")
    assert r.status_code == 422 and "no plan" in r.json()["message"]
    r = await checkout(plan="pro", package="c100")
    assert r.status_code == 422
    r = await checkout(plan="pro")
    assert r.status_code == 201
    assert (r.json()["plan"], r.json()["credits"], r.json()["currency"]) == ("pro", 1000, None)
