"""Payment webhooks end to end: real uvicorn servers, real PostgreSQL, events signed by the
providers' own libraries (stripe, standardwebhooks)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import standardwebhooks
import stripe
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect

from server.auth import mint_token
from server.config import ConfigError, standard_webhooks_key
from server.dev import routes as devroutes
from server.dev.servers import free_port
from server.ledger import Ledger
from server.messages import BalanceFrame
from server.payments.signatures import standard_signature, stripe_signature
from tests.conftest import RunningApp, StartApp, key

Json = dict[str, Any]

STRIPE_SECRET = "whsec_" + secrets.token_hex(16)
DODO_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


# ---------------------------------------------------------------- signing and sending


def stripe_event(kind: str, obj: Json, event_id: str | None = None) -> bytes:
    event = {"id": event_id or uid("evt"), "object": "event", "type": kind,
             "created": int(time.time()), "livemode": False, "data": {"object": obj}}
    return json.dumps(event).encode()


# The test catalog sells a package `cN` of N credits for any amount from 1 cent, so that a
# test names the credits it buys; metadata `credits` rides along as the cross-check.
PACKAGES = [*range(1, 201), 500]
CATALOG = {
    "prices": {"generate_image": 5},
    "packages": {f"c{n}": {"credits": n, "price": {"usd": 1}} for n in PACKAGES},
    "pay_as_you_go": {"credits_per_unit": {"usd": 100}},  # a credit a cent (dev buy)
}


def sold(account: str | None, credits: str | None) -> Json:
    """The metadata a checkout selling `credits` credits puts on the session and payment."""
    metadata: Json = {"account_id": account, "credits": credits}
    if credits is not None and credits.isascii() and credits.isdigit() \
            and int(credits) in PACKAGES:
        metadata["package"] = f"c{int(credits)}"
    return {k: v for k, v in metadata.items() if v is not None}


def session(account: str | None, credits: str | None, pi: str | None, amount: int = 1000,
            **extra: Any) -> Json:
    metadata = sold(account, credits)
    return {"id": uid("cs_test"), "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "status": "complete", "payment_intent": pi,
            "amount_total": amount, "currency": "usd", "metadata": metadata, **extra}


def payment_intent(pi: str, metadata: Json, amount: int = 1000) -> Json:
    return {"id": pi, "object": "payment_intent", "amount": amount, "amount_received": amount,
            "currency": "usd", "status": "succeeded", "metadata": metadata}


def charge(pi: str, amount: int, refunded: int, charge_id: str | None = None) -> Json:
    return {"id": charge_id or f"ch_{pi}", "object": "charge", "payment_intent": pi,
            "amount": amount, "amount_captured": amount, "amount_refunded": refunded,
            "refunded": refunded == amount, "currency": "usd", "metadata": {}}


def dodo_event(kind: str, data: Json) -> bytes:
    return json.dumps({"business_id": "bus_test", "type": kind,
                       "timestamp": datetime.now(UTC).isoformat(), "data": data}).encode()


def dodo_payment(account: str, credits: str, pay: str, total: int = 1000,
                 account_key: str = "account_id", credits_key: str = "credits") -> bytes:
    return dodo_event("payment.succeeded", {
        "payload_type": "Payment", "payment_id": pay, "total_amount": total, "currency": "USD",
        "status": "succeeded", "metadata": {
            **{k: v for k, v in sold(account, credits).items() if k == "package"},
            account_key: account, credits_key: credits}})


def dodo_refund(pay: str, amount: int | None, partial: bool, refund_id: str | None = None) -> bytes:
    return dodo_event("refund.succeeded", {
        "payload_type": "Refund", "refund_id": refund_id or uid("ref"), "payment_id": pay,
        "amount": amount, "currency": "USD", "is_partial": partial, "status": "succeeded",
        "metadata": {}})


async def post_stripe(http: httpx.AsyncClient, payload: bytes, *, secret: str = STRIPE_SECRET,
                      at: int | None = None, header: str | None = None) -> httpx.Response:
    if header is None:
        header = stripe.WebhookSignature.generate_signature_header(
            payload.decode(), secret, int(time.time()) if at is None else at)
    return await http.post("/v1/webhooks/stripe", content=payload,
                           headers={"Stripe-Signature": header,
                                    "Content-Type": "application/json"})


def dodo_headers(payload: bytes, *, secret: str = DODO_SECRET, msg_id: str | None = None,
                 at: int | None = None) -> dict[str, str]:
    msg_id = msg_id or uid("msg")
    ts = int(time.time()) if at is None else at
    signature = standardwebhooks.Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(ts, UTC), payload.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature,
            "Content-Type": "application/json"}


async def post_dodo(http: httpx.AsyncClient, payload: bytes, *,
                    headers: dict[str, str] | None = None, **sign: Any) -> httpx.Response:
    if headers is None:
        headers = dodo_headers(payload, **sign)
    return await http.post("/v1/webhooks/dodo", content=payload, headers=headers)


# ---------------------------------------------------------------- fixtures and checks


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    path.write_text(json.dumps(CATALOG))
    return str(path)


async def start_payments_app(
    start_app: StartApp, catalog_file: str, **overrides: Any
) -> RunningApp:
    settings: dict[str, Any] = {
        "catalog_file": catalog_file,
        "stripe_webhook_secret": STRIPE_SECRET,
        "dodo_webhook_key": standard_webhooks_key("BALANCE_DODO_WEBHOOK_SECRET", DODO_SECRET),
    }
    settings.update(overrides)
    return await start_app(**settings)


@pytest.fixture(scope="module")
async def wapp(start_app: StartApp, catalog_file: str) -> RunningApp:
    return await start_payments_app(start_app, catalog_file)


@pytest.fixture
async def http(wapp: RunningApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no credentials: providers send none."""
    async with httpx.AsyncClient(base_url=wapp.base_url, timeout=30) as c:
        yield c


@pytest.fixture
async def backend(wapp: RunningApp) -> AsyncIterator[httpx.AsyncClient]:
    async with wapp.client() as c:
        yield c


@pytest.fixture
def account() -> str:
    return f"buyer-{uuid.uuid4().hex[:12]}"


async def balance(backend: httpx.AsyncClient, account: str) -> int:
    r = await backend.get(f"/v1/accounts/{account}")
    assert r.status_code == 200, r.text
    value: int = r.json()["balance"]
    return value


async def ledger(backend: httpx.AsyncClient, account: str) -> list[tuple[str, int]]:
    r = await backend.get(f"/v1/accounts/{account}/transactions", params={"limit": 200})
    return [(t["kind"], t["amount"]) for t in reversed(r.json()["transactions"])]


async def assert_reconciled(db: asyncpg.Pool, *accounts: str) -> None:
    rows = await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = ANY($1)",
                          list(accounts))
    assert rows == []
    for account in accounts:
        stored = await db.fetchval(
            "SELECT balance - (SELECT COALESCE(sum(amount), 0) FROM transactions"
            " WHERE account_id = $1) FROM accounts WHERE account_id = $1", account)
        assert stored in (0, None)


def rejected(provider: str) -> float:
    value = REGISTRY.get_sample_value(
        "balance_webhook_signatures_rejected_total", {"provider": provider})
    return value or 0.0


# ---------------------------------------------------------------- Stripe purchases


async def test_checkout_purchase_credits_once(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi = uid("pi")
    payload = stripe_event("checkout.session.completed", session(account, "120", pi))
    r = await post_stripe(http, payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["received"], body["result"], body["payment_id"]) == (True, "fulfilled", pi)
    t = body["transaction"]
    assert (t["kind"], t["amount"], t["account_id"]) == ("purchase", 120, account)
    assert t["metadata"]["payment_id"] == pi and t["metadata"]["provider"] == "stripe"
    assert body["account"]["balance"] == 120 and body["account"]["purchased"] == 120
    # Redelivery (Stripe re-signs it with a new timestamp): nothing changes.
    again = await post_stripe(http, payload, at=int(time.time()) - 5)
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert again.json()["account"]["balance"] == 120
    assert await ledger(backend, account) == [("purchase", 120)]
    await assert_reconciled(db, account)


async def test_same_payment_under_new_event_id(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    pi = uid("pi")
    first = await post_stripe(http, stripe_event("checkout.session.completed",
                                                 session(account, "40", pi)))
    assert first.json()["result"] == "fulfilled"
    # A new event id and a new session id, same PaymentIntent: the same money.
    second = await post_stripe(http, stripe_event("checkout.session.completed",
                                                  session(account, "40", pi)))
    assert second.status_code == 200 and second.json()["result"] == "duplicate"
    assert await balance(backend, account) == 40


async def test_checkout_and_payment_intent_for_one_purchase_credit_once(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi = uid("pi")
    metadata = sold(account, "75")
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(account, "75", pi)))
    assert r.json()["result"] == "fulfilled"
    r = await post_stripe(http, stripe_event("payment_intent.succeeded",
                                             payment_intent(pi, metadata)))
    assert r.status_code == 200 and r.json()["result"] == "duplicate"
    assert await ledger(backend, account) == [("purchase", 75)]

    # The other order, a PaymentIntent without metadata first (a session not made by our
    # checkout, which copies its metadata onto the payment): none of ours, so not queued for
    # review (a subscription invoice's payment looks the same, and its invoice.paid grants
    # the period); the session then credits it once.
    other, pi2 = f"{account}-2", uid("pi")
    r = await post_stripe(http, stripe_event("payment_intent.succeeded", payment_intent(pi2, {})))
    assert r.status_code == 200 and r.json()["result"] == "ignored"
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(other, "30", pi2)))
    assert r.json()["result"] == "fulfilled"
    assert await db.fetchval(
        "SELECT count(*) FROM webhook_events_unfulfilled WHERE payment_id = $1", pi2) == 0
    r = await post_stripe(http, stripe_event("payment_intent.succeeded", payment_intent(pi2, {})))
    assert r.json()["result"] == "ignored"
    assert await balance(backend, other) == 30
    await assert_reconciled(db, account, other)


async def test_concurrent_redelivery_on_two_instances(
    start_app: StartApp, wapp: RunningApp, backend: httpx.AsyncClient, db: asyncpg.Pool,
    account: str, catalog_file: str,
) -> None:
    other = await start_payments_app(start_app, catalog_file)
    pi = uid("pi")
    payloads = [stripe_event("checkout.session.completed", session(account, "500", pi))
                for _ in range(3)]
    async with httpx.AsyncClient(base_url=wapp.base_url, timeout=30) as a, \
            httpx.AsyncClient(base_url=other.base_url, timeout=30) as b:
        answers = await asyncio.gather(*(post_stripe(c, p) for p in payloads for c in (a, b)),
                                       *(post_stripe(c, payloads[0]) for c in (a, b)))
    assert all(r.status_code == 200 for r in answers)
    results = sorted(r.json()["result"] for r in answers)
    assert results == ["duplicate"] * 7 + ["fulfilled"]
    assert await ledger(backend, account) == [("purchase", 500)]
    assert await db.fetchval("SELECT count(*) FROM payments WHERE payment_id = $1", pi) == 1
    await assert_reconciled(db, account)
    await other.stop()


# ---------------------------------------------------------------- Stripe refunds


async def test_stripe_full_refund_reverses_the_purchase(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi = uid("pi")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "100", pi, amount=1500)))
    payload = stripe_event("charge.refunded", charge(pi, 1500, 1500))
    r = await post_stripe(http, payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["result"], body["credits_reversed"]) == ("reversed", 100)
    assert (body["transaction"]["kind"], body["transaction"]["amount"]) == ("reversal", -100)
    assert (await post_stripe(http, payload)).json()["result"] == "duplicate"
    assert await ledger(backend, account) == [("purchase", 100), ("reversal", -100)]
    await assert_reconciled(db, account)


async def test_stripe_partial_refunds_are_proportional_and_cumulative(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi = uid("pi")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "100", pi, amount=999)))
    steps = [(333, 33), (666, 66), (700, 70), (999, 100)]  # refunded so far -> reversed so far
    for refunded, total in steps:
        r = await post_stripe(http, stripe_event("charge.refunded", charge(pi, 999, refunded)))
        assert r.status_code == 200 and r.json()["result"] == "reversed"
        assert r.json()["credits_reversed_total"] == total
        # A late or repeated snapshot of an earlier total never reverses again.
        late = await post_stripe(http, stripe_event("charge.refunded", charge(pi, 999, 333)))
        assert late.json()["result"] in ("duplicate", "nothing_to_reverse")
        assert await balance(backend, account) == 100 - total
    assert await ledger(backend, account) == [
        ("purchase", 100), ("reversal", -33), ("reversal", -33), ("reversal", -4),
        ("reversal", -30)]
    await assert_reconciled(db, account)


async def test_rounding_never_over_reverses(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    # 7 credits for 3 cents, refunded a cent at a time: 2, then 4, then exactly 7.
    pi = uid("pi")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "7", pi, amount=3)))
    seen = []
    for refunded in (1, 2, 3):
        r = await post_stripe(http, stripe_event("charge.refunded", charge(pi, 3, refunded)))
        seen.append(r.json()["credits_reversed_total"])
    assert seen == [2, 4, 7]
    assert await balance(backend, account) == 0


async def test_stripe_refund_before_payment_waits(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi = uid("pi")
    r = await post_stripe(http, stripe_event("charge.refunded", charge(pi, 1000, 500)))
    assert r.status_code == 200 and r.json()["result"] == "pending"
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(account, "80", pi)))
    body = r.json()
    assert (body["result"], body["credits_reversed"], body["account"]["balance"]) == (
        "fulfilled", 40, 40)
    assert await ledger(backend, account) == [("purchase", 80), ("reversal", -40)]
    await assert_reconciled(db, account)


# ---------------------------------------------------------------- Dodo


async def test_dodo_purchase_and_partial_refunds(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pay = uid("pay")
    payment = dodo_payment(account, "50", pay, total=1000)
    r = await post_dodo(http, payment)
    assert r.status_code == 200, r.text
    assert (r.json()["result"], r.json()["transaction"]["amount"]) == ("fulfilled", 50)
    # The same payment redelivered under a new webhook-id: nothing changes.
    assert (await post_dodo(http, payment)).json()["result"] == "duplicate"

    first = dodo_refund(pay, 300, partial=True, refund_id=uid("ref"))
    r = await post_dodo(http, first)
    assert (r.json()["result"], r.json()["credits_reversed"]) == ("reversed", 15)
    assert (await post_dodo(http, first)).json()["result"] == "duplicate"
    r = await post_dodo(http, dodo_refund(pay, 333, partial=True))
    assert (r.json()["credits_reversed"], r.json()["credits_reversed_total"]) == (16, 31)
    r = await post_dodo(http, dodo_refund(pay, 367, partial=True))
    assert (r.json()["credits_reversed"], r.json()["credits_reversed_total"]) == (19, 50)
    # More refunds than the payment (should never happen) cannot take more than it bought.
    r = await post_dodo(http, dodo_refund(pay, 100, partial=True))
    assert r.json()["result"] == "nothing_to_reverse"
    assert await balance(backend, account) == 0
    assert [k for k, _ in await ledger(backend, account)] == ["purchase"] + ["reversal"] * 3
    await assert_reconciled(db, account)


async def test_dodo_refund_before_its_payment_is_applied_on_arrival(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pay = uid("pay")
    # A full refund with empty metadata, resolved only through payment_id.
    r = await post_dodo(http, dodo_refund(pay, None, partial=False))
    assert r.status_code == 200 and r.json()["result"] == "pending"
    assert await db.fetchval("SELECT count(*) FROM pending_refunds WHERE payment_id = $1",
                             pay) == 1
    r = await post_dodo(http, dodo_payment(account, "90", pay))
    body = r.json()
    assert (body["result"], body["credits_reversed"], body["account"]["balance"]) == (
        "fulfilled", 90, 0)
    assert await db.fetchval("SELECT count(*) FROM pending_refunds WHERE payment_id = $1",
                             pay) == 0
    assert await ledger(backend, account) == [("purchase", 90), ("reversal", -90)]
    # The payment redelivered after that: still nothing more.
    assert (await post_dodo(http, dodo_payment(account, "90", pay))).json()["result"] == \
        "duplicate"
    await assert_reconciled(db, account)


async def test_dodo_refund_racing_its_payment(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    for _ in range(5):
        pay = uid("pay")
        results = await asyncio.gather(post_dodo(http, dodo_payment(account, "10", pay)),
                                       post_dodo(http, dodo_refund(pay, 1000, partial=True)))
        assert all(r.status_code == 200 for r in results)
    assert await balance(backend, account) == 0
    await assert_reconciled(db, account)


async def test_dodo_seed_metadata_names(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    r = await post_dodo(http, dodo_payment(account, "15", uid("pay"), account_key="user_id",
                                           credits_key="credit_amount"))
    assert r.json()["result"] == "fulfilled"
    assert await balance(backend, account) == 15


async def test_dodo_accepts_any_of_several_signatures(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    payload = dodo_payment(account, "5", uid("pay"))
    headers = dodo_headers(payload)
    wrong = "v1," + base64.b64encode(secrets.token_bytes(32)).decode()
    headers["webhook-signature"] = f"{wrong} v2,abc v1,@@notbase64 {headers['webhook-signature']}"
    r = await post_dodo(http, payload, headers=headers)
    assert r.status_code == 200 and r.json()["result"] == "fulfilled"
    assert await balance(backend, account) == 5


# ---------------------------------------------------------------- refusals


def _stripe_bad_headers(payload: bytes) -> list[str]:
    now = int(time.time())
    good = stripe.WebhookSignature.generate_signature_header(payload.decode(), STRIPE_SECRET, now)
    sig = good.split("v1=")[1]
    return [
        "",
        "garbage",
        "t=,v1=" + sig,
        f"t={now}",
        f"t=abc,v1={sig}",
        f"t={now},t={now},v1={sig}",
        f"t={now},v0={sig}",
        f"t={now},v1={'0' * 64}",
        f"t={now + 1},v1={sig}",
        f"t={now},v1={sig[:-1]}",
        stripe.WebhookSignature.generate_signature_header(payload.decode(), "whsec_other", now),
    ]


def _skewed(skew: int) -> int:
    """A timestamp `skew` s away from now, rounded away from now: 301 stays over the 300 s
    tolerance however the clock's fraction falls, for up to a second of request time."""
    return math.ceil(time.time()) + skew if skew > 0 else math.floor(time.time()) + skew


async def test_stripe_bad_signatures_are_401_and_write_nothing(
    http: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi = uid("pi")
    payload = stripe_event("checkout.session.completed", session(account, "10", pi))
    before = rejected("stripe")
    headers = _stripe_bad_headers(payload)
    for header in headers:
        r = await post_stripe(http, payload, header=header)
        assert r.status_code == 401, (header, r.text)
        assert r.json()["error"] == "unauthorized"
    for skew in (-301, 301):  # signed right, but outside the tolerance
        stale = stripe.WebhookSignature.generate_signature_header(
            payload.decode(), STRIPE_SECRET, _skewed(skew))
        r = await post_stripe(http, payload, header=stale)
        assert r.status_code == 401, (stale, r.text)
        headers.append(stale)
    r = await http.post("/v1/webhooks/stripe", content=payload)  # no header at all
    assert r.status_code == 401
    # Signed, then altered.
    header = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), STRIPE_SECRET, int(time.time()))
    tampered = payload.replace(b'"10"', b'"99"')
    assert (await post_stripe(http, tampered, header=header)).status_code == 401
    assert rejected("stripe") - before == len(headers) + 2
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE account_id = $1", account) == 0
    assert await db.fetchval("SELECT count(*) FROM payments WHERE payment_id = $1", pi) == 0


async def test_tolerance_edges_and_rolled_secrets_are_accepted(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    for offset in (-295, 295):
        payload = stripe_event("checkout.session.completed", session(account, "1", uid("pi")))
        r = await post_stripe(http, payload, at=int(time.time()) + offset)
        assert r.status_code == 200, r.text
        r = await post_dodo(http, dodo_payment(account, "1", uid("pay")),
                            at=int(time.time()) + offset)
        assert r.status_code == 200, r.text
    # While a secret is being rolled Stripe signs with both: any matching v1= is enough.
    payload = stripe_event("checkout.session.completed", session(account, "1", uid("pi")))
    now = int(time.time())
    right = stripe.WebhookSignature.generate_signature_header(payload.decode(), STRIPE_SECRET, now)
    header = f"t={now},v1={'ab' * 32},{right.split(',')[1]},v0={'cd' * 32}"
    assert (await post_stripe(http, payload, header=header)).status_code == 200
    assert await balance(backend, account) == 5


async def test_dodo_bad_signatures_are_401_and_write_nothing(
    http: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pay = uid("pay")
    payload = dodo_payment(account, "10", pay)
    now = int(time.time())
    good = dodo_headers(payload, at=now)
    other_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    cases: list[dict[str, str]] = [
        {},
        {**good, "webhook-signature": ""},
        {k: v for k, v in good.items() if k != "webhook-id"},
        {k: v for k, v in good.items() if k != "webhook-timestamp"},
        {**good, "webhook-id": uid("msg")},                    # signed for another id
        {**good, "webhook-timestamp": str(now + 1)},           # signed for another time
        {**good, "webhook-timestamp": "soon"},
        {**good, "webhook-timestamp": "-5"},
        {**good, "webhook-signature": "v1"},
        {**good, "webhook-signature": "garbage"},
        {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")},
        {**good, "webhook-signature": "v1,####"},
        dodo_headers(payload, secret=other_secret),
    ]
    before = rejected("dodo")
    for headers in cases:
        r = await post_dodo(http, payload, headers=headers)
        assert r.status_code == 401, (headers, r.text)
    for skew in (-301, 301):  # signed right, but outside the tolerance
        stale = dodo_headers(payload, at=_skewed(skew))
        r = await post_dodo(http, payload, headers=stale)
        assert r.status_code == 401, (stale, r.text)
        cases.append(stale)
    tampered = payload.replace(b'"10"', b'"99"')
    assert (await post_dodo(http, tampered, headers=good)).status_code == 401
    assert rejected("dodo") - before == len(cases) + 1
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE account_id = $1", account) == 0
    assert await db.fetchval("SELECT count(*) FROM payments WHERE payment_id = $1", pay) == 0


async def test_no_secret_configured_is_404(start_app: StartApp) -> None:
    bare = await start_app()
    async with httpx.AsyncClient(base_url=bare.base_url) as c:
        payload = stripe_event("checkout.session.completed", session("a", "1", uid("pi")))
        r = await post_stripe(c, payload)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await post_dodo(c, dodo_payment("a", "1", uid("pay")))
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    await bare.stop()


async def test_signed_but_unreadable_bodies(http: httpx.AsyncClient) -> None:
    r = await post_stripe(http, b"not json")
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = await post_stripe(http, b'{"id": "evt_1", "type": "x"}')
    assert r.status_code == 422
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session("a", "1", None, id=None)))
    assert r.status_code == 422
    r = await post_dodo(http, b"{nope")
    assert r.status_code == 400
    r = await post_dodo(http, dodo_event("payment.succeeded", {"metadata": {}}))
    assert r.status_code == 422 and "payment_id" in r.json()["detail"]
    r = await http.post("/v1/webhooks/stripe", content=b"x" * (65 * 1024))
    assert r.status_code == 413


async def test_unknown_events_are_ignored(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    r = await post_stripe(http, stripe_event("customer.created", {"id": "cus_1"}))
    assert (r.status_code, r.json()["result"]) == (200, "ignored")
    unpaid = session(account, "10", uid("pi"), payment_status="unpaid")
    r = await post_stripe(http, stripe_event("checkout.session.completed", unpaid))
    assert (r.status_code, r.json()["result"]) == (200, "ignored")
    subscription = session(account, "10", None, mode="subscription")
    r = await post_stripe(http, stripe_event("checkout.session.completed", subscription))
    assert r.json()["result"] == "ignored"
    r = await post_dodo(http, dodo_event("subscription.active", {"subscription_id": "sub_1"}))
    assert (r.status_code, r.json()["result"]) == (200, "ignored")
    assert await balance(backend, account) == 0


@pytest.mark.parametrize("credits", ["0", "-3", "12.5", "1e3", " 7", "7\n", "١٢",
                                     "1000000000001", "99999999999999999999"])
async def test_bad_metadata_needs_review(
    http: httpx.AsyncClient, db: asyncpg.Pool, account: str, credits: str | None
) -> None:
    event_id = uid("evt")
    payload = stripe_event("checkout.session.completed", session(account, credits, uid("pi")),
                           event_id=event_id)
    for _ in range(2):  # a redelivery records nothing more
        r = await post_stripe(http, payload)
        assert r.status_code == 200
        assert r.json()["result"] == "needs_review"
        assert "credits" in r.json()["problem"]
    rows = await db.fetch("SELECT * FROM webhook_events_unfulfilled WHERE event_id = $1",
                          event_id)
    assert len(rows) == 1 and rows[0]["provider"] == "stripe"
    assert json.loads(rows[0]["payload"])["id"] == event_id
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE account_id = $1", account) == 0


async def test_missing_account_is_recorded(http: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(None, "10", uid("pi"))))
    assert r.json()["result"] == "needs_review" and "account_id" in r.json()["problem"]
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session("bad account!", "10", uid("pi"))))
    assert r.json()["result"] == "needs_review"
    msg_id = uid("msg")
    payload = dodo_event("payment.succeeded", {"payment_id": uid("pay"), "total_amount": 100,
                                               "metadata": {}})
    r = await post_dodo(http, payload, msg_id=msg_id)
    assert r.status_code == 200 and r.json()["result"] == "needs_review"
    row = await db.fetchrow("SELECT * FROM webhook_events_unfulfilled WHERE event_id = $1", msg_id)
    assert row is not None and row["provider"] == "dodo" and row["resolved_at"] is None


# ---------------------------------------------------------------- refund policy


@pytest.mark.parametrize("policy", ["debt", "clamp"])
async def test_refund_policy(
    start_app: StartApp, db: asyncpg.Pool, account: str, policy: str, catalog_file: str
) -> None:
    app = await start_payments_app(start_app, catalog_file, refund_policy=policy)
    pi = uid("pi")
    async with httpx.AsyncClient(base_url=app.base_url) as c, app.client() as b:
        await post_stripe(c, stripe_event("checkout.session.completed",
                                          session(account, "100", pi)))
        r = await b.post(f"/v1/accounts/{account}/debit",
                         json={"amount": 80, "reason": "render", "idempotency_key": key()})
        assert r.status_code == 200
        r = await post_stripe(c, stripe_event("charge.refunded", charge(pi, 1000, 1000)))
        body = r.json()
        if policy == "debt":
            assert body["transaction"]["amount"] == -100 and "unrecovered" not in body
            assert await balance(b, account) == -80
        else:
            assert body["transaction"]["amount"] == -20 and body["unrecovered"] == 80
            assert await balance(b, account) == 0
            # Nothing left to take: still recorded, no ledger row of 0.
            other, pi2 = f"{account}-2", uid("pi")
            await post_stripe(c, stripe_event("checkout.session.completed",
                                              session(other, "10", pi2)))
            await b.post(f"/v1/accounts/{other}/debit",
                         json={"amount": 10, "reason": "x", "idempotency_key": key()})
            r = await post_stripe(c, stripe_event("charge.refunded", charge(pi2, 1000, 1000)))
            assert r.json()["transaction"] is None and r.json()["unrecovered"] == 10
            assert await db.fetchval("SELECT unrecovered FROM payments WHERE payment_id = $1",
                                     pi2) == 10
    unrecovered = await db.fetchval("SELECT unrecovered FROM payments WHERE payment_id = $1", pi)
    assert unrecovered == (0 if policy == "debt" else 80)
    await assert_reconciled(db, account)
    await app.stop()


# ---------------------------------------------------------------- concurrency, push, dev


async def test_webhook_racing_debits_on_one_account(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    r = await backend.post(f"/v1/accounts/{account}/credit",
                           json={"amount": 100, "kind": "grant", "idempotency_key": key()})
    assert r.status_code == 200

    async def debit() -> int:
        r = await backend.post(f"/v1/accounts/{account}/debit",
                               json={"amount": 10, "reason": "x", "idempotency_key": key()})
        return r.status_code

    pis = [uid("pi") for _ in range(3)]
    purchases = [post_stripe(http, stripe_event("checkout.session.completed",
                                                session(account, "50", pi))) for pi in pis]
    refund = post_stripe(http, stripe_event("charge.refunded", charge(pis[0], 1000, 500)))
    codes, hooks = await asyncio.gather(asyncio.gather(*(debit() for _ in range(30))),
                                        asyncio.gather(*purchases, refund))
    assert set(codes) <= {200, 402}
    ok = codes.count(200)
    assert all(r.status_code == 200 for r in hooks)
    assert await balance(backend, account) == 100 + 150 - 25 - 10 * ok
    await assert_reconciled(db, account)


async def test_purchase_and_reversal_are_published_after_commit(
    wapp: RunningApp, http: httpx.AsyncClient, account: str
) -> None:
    asgi: Any = wapp.server.config.app
    ledger: Ledger = asgi.state.resources.ledger
    published: list[BalanceFrame] = []
    ledger.on_commit(published.append)  # the ledger's one door, as the publisher hears it
    pi = uid("pi")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "33", pi)))
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "33", pi)))  # a replay: silent
    await post_stripe(http, stripe_event("charge.refunded", charge(pi, 1000, 1000)))
    mine = [f for f in published if f.account_id == account]
    assert [(f.balance, f.version, f.change.kind if f.change else None) for f in mine] == [
        (33, 1, "purchase"), (0, 2, "reversal")]
    assert mine[0].change is not None and mine[0].change.reason == "purchase via stripe"


async def test_purchase_is_pushed_live(
    wapp: RunningApp, http: httpx.AsyncClient, account: str
) -> None:
    token = mint_token(wapp.settings.token_secret, account, 600)[0]
    async with connect(wapp.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        async with asyncio.timeout(5):
            snapshot = json.loads(await ws.recv())
        assert snapshot["balance"] == 0
        await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(account, "33", uid("pi"))))
        async with asyncio.timeout(5):
            frame = json.loads(await ws.recv())
    assert (frame["balance"], frame["change"]["kind"], frame["change"]["amount"]) == (
        33, "purchase", 33)


async def test_dev_checkout_pays_on_the_stand_in_through_the_signed_path(
    start_app: StartApp, db: asyncpg.Pool, account: str, catalog_file: str
) -> None:
    """What the demo's "Buy credits" does: checkout (the Stripe SDK, against dev's stand-in),
    the hosted page, "Pay" (a signed webhook down the real path), back to the app."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = await start_payments_app(
        start_app, catalog_file, extra_routes=devroutes.routes(), port=port,
        stripe_api_key="sk_dev_standin", stripe_api_base=f"{base}/dev/stripe",
        checkout_return_urls=(f"{base}/",))
    before = REGISTRY.get_sample_value("balance_purchases_total", {"provider": "stripe"}) or 0
    async with app.client() as c, httpx.AsyncClient(base_url=base) as browser:
        r = await c.post(f"/v1/accounts/{account}/checkout", json={
            "provider": "stripe", "package": "c25", "success_url": f"{base}/?done",
            "idempotency_key": key()})
        assert r.status_code == 201, r.text
        page = await browser.get(r.json()["url"])
        assert page.status_code == 200 and "Pay 0.01 USD" in page.text
        for _ in range(2):  # paying twice credits once
            paid = await browser.post(r.json()["url"])
            assert paid.status_code == 303 and paid.headers["location"] == f"{base}/?done"
        assert (await c.get(f"/v1/accounts/{account}")).json()["balance"] == 25
    after = REGISTRY.get_sample_value("balance_purchases_total", {"provider": "stripe"})
    assert after == before + 1
    assert await db.fetchval("SELECT count(*) FROM payments WHERE account_id = $1", account) == 1
    await assert_reconciled(db, account)
    await app.stop()


def test_our_signatures_are_the_providers() -> None:
    payload = b'{"id": "evt_1", "type": "ping"}'
    now = int(time.time())
    header = stripe_signature(payload, STRIPE_SECRET, now)
    assert stripe.WebhookSignature.verify_header(payload.decode(), header, STRIPE_SECRET, 300)
    assert header == stripe.WebhookSignature.generate_signature_header(
        payload.decode(), STRIPE_SECRET, now)
    key = standard_webhooks_key("BALANCE_DODO_WEBHOOK_SECRET", DODO_SECRET)
    entry = standard_signature(payload, key, "msg_1", now)
    standardwebhooks.Webhook(DODO_SECRET).verify(
        payload, {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": entry})
    with pytest.raises(ConfigError, match="BALANCE_DODO_WEBHOOK_SECRET"):
        standard_webhooks_key("BALANCE_DODO_WEBHOOK_SECRET", "whsec_###")


async def test_hole2_reserved_keys_are_refused_by_the_api(
    backend: httpx.AsyncClient, account: str
) -> None:
    for reserved in ("webhook:stripe:pi_1:reversed:10", "system:renewal:1"):
        for path, body in (("debit", {"amount": 1, "reason": "x"}),
                           ("credit", {"amount": 1, "kind": "grant"}),
                           ("holds", {"amount": 1, "reason": "x"})):
            r = await backend.post(f"/v1/accounts/{account}/{path}",
                                   json={**body, "idempotency_key": reserved})
            assert r.status_code == 422, (path, r.text)
            assert "idempotency_key" in r.json()["detail"]


async def test_hole2_a_reversal_that_cannot_be_posted_is_never_skipped(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    """The key a reversal needs, taken by a debit (as release 0.1.0's API allowed): the
    refund is a 5xx, the provider retries, and nothing is marked reversed meanwhile."""
    pi = uid("pi")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "50", pi)))
    squatted = f"webhook:stripe:{pi}:reversed:50"
    await db.execute(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, response)"
        " VALUES ($1, $2, '\\x00', '{}')", account, squatted)
    refund = stripe_event("charge.refunded", charge(pi, 1000, 1000))
    for _ in range(2):
        r = await post_stripe(http, refund)
        assert r.status_code == 500, r.text
        assert await balance(backend, account) == 50
        assert await db.fetchval(
            "SELECT reversed FROM payments WHERE payment_id = $1", pi) == 0
        assert await db.fetchval(
            "SELECT count(*) FROM payment_refunds WHERE payment_id = $1", pi) == 0
    await db.execute("DELETE FROM idempotency_keys WHERE key = $1", squatted)  # an operator
    r = await post_stripe(http, refund)  # the provider's next retry
    assert r.status_code == 200 and r.json()["result"] == "reversed"
    assert await balance(backend, account) == 0
    await assert_reconciled(db, account)


async def test_a_purchase_key_taken_before_reservation_is_recorded_not_a_500(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi = uid("pi")
    await db.execute(  # as release 0.1.0's API allowed
        "INSERT INTO idempotency_keys (account_id, key, request_hash, response)"
        " VALUES ($1, $2, '\\x00', '{}')", account, f"webhook:stripe:{pi}")
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(account, "10", pi)))
    assert r.status_code == 200 and r.json()["result"] == "needs_review"
    assert await balance(backend, account) == 0
    assert await db.fetchval("SELECT count(*) FROM payments WHERE payment_id = $1", pi) == 0
    # Its operator cannot credit it to that account either (the key is still taken): a
    # clear 422, nothing written; to another account it goes.
    review = (await under_review(backend, pi))["review"]["id"]
    r = await resolve(backend, review, action="credit", note="ticket 3")
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
    assert "already used" in r.json()["message"]
    assert await balance(backend, account) == 0
    r = await resolve(backend, review, action="credit", account_id=f"{account}-2",
                      note="ticket 3: the buyer's team account")
    assert r.status_code == 200 and r.json()["account"]["balance"] == 10


# ---------------------------------------------------------------- credits from money received


async def test_hole1_metadata_cannot_raise_the_credits(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    """Dodo's static payment links take `metadata_*` query parameters: the cheapest product
    with metadata_credits=10^12 credits nothing, and is recorded for review."""
    pay = uid("pay")
    cheapest = dodo_event("payment.succeeded", {
        "payment_id": pay, "total_amount": 1, "currency": "USD", "status": "succeeded",
        "metadata": {"account_id": account, "package": "c1", "credits": "1000000000000"}})
    r = await post_dodo(http, cheapest)
    assert (r.status_code, r.json()["result"]) == (200, "needs_review")
    assert "1000000000000" in r.json()["problem"]
    # Without the cross-check, the package decides: 1 credit, whatever else is claimed.
    r = await post_stripe(http, stripe_event("checkout.session.completed", {
        **session(account, None, uid("pi"), amount=1), "metadata": {
            "account_id": account, "package": "c1", "credit_amount": "999999"}}))
    assert (r.json()["result"], r.json()["account"]["balance"]) == ("fulfilled", 1)
    assert await balance(backend, account) == 1
    row = await db.fetchrow("SELECT * FROM webhook_events_unfulfilled WHERE payment_id = $1",
                            pay)
    assert row is not None and row["resolved_at"] is None


@pytest.mark.parametrize(("metadata", "amount", "currency", "why"), [
    ({"package": "c100"}, 0, "usd", "costs 1"),
    ({"package": "c100"}, 500, "eur", "no price in eur"),
    ({"package": "nope"}, 500, "usd", "unknown package"),
    ({}, 500, "eur", "no pay-as-you-go rate in eur"),
    ({"credits": "6"}, 500, "usd", "not the 500 credits"),
])
async def test_what_was_paid_must_buy_the_credits(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str, metadata: Json,
    amount: int, currency: str, why: str,
) -> None:
    obj = {**session(account, None, uid("pi"), amount=amount), "currency": currency,
           "metadata": {"account_id": account, **metadata}}
    r = await post_stripe(http, stripe_event("checkout.session.completed", obj))
    assert (r.status_code, r.json()["result"]) == (200, "needs_review"), r.text
    assert why in r.json()["problem"]
    assert await balance(backend, account) == 0


async def test_pay_as_you_go_buys_at_the_catalog_rate(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    obj = {**session(account, None, uid("pi"), amount=1234), "metadata": {"account_id": account}}
    r = await post_stripe(http, stripe_event("checkout.session.completed", obj))
    assert r.json()["result"] == "fulfilled"
    assert await balance(backend, account) == 1234  # 100 credits a dollar


# ---------------------------------------------------------------- disputes


def stripe_dispute(kind: str, pi: str, amount: int, status: str, dispute_id: str) -> bytes:
    return stripe_event(kind, {"id": dispute_id, "object": "dispute", "amount": amount,
                               "currency": "usd", "charge": f"ch_{pi}", "payment_intent": pi,
                               "status": status, "reason": "fraudulent"})


async def test_hole3_a_stripe_chargeback_takes_the_credits_back_until_won(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi, dp = uid("pi"), uid("dp")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "100", pi)))
    await backend.post(f"/v1/accounts/{account}/debit",
                       json={"amount": 60, "reason": "spent", "idempotency_key": key()})
    opened = stripe_dispute("charge.dispute.created", pi, 1000, "needs_response", dp)
    r = await post_stripe(http, opened)
    assert (r.status_code, r.json()["result"]) == (200, "dispute_taken"), r.text
    assert await balance(backend, account) == -60  # into debt, like a reversal
    assert (await post_stripe(http, opened)).json()["result"] == "nothing_to_change"
    won = stripe_dispute("charge.dispute.closed", pi, 1000, "won", dp)
    r = await post_stripe(http, won)
    assert r.json()["result"] == "dispute_returned"
    assert await balance(backend, account) == 40
    for late in (won, opened):  # once won, redeliveries change nothing
        assert (await post_stripe(http, late)).json()["result"] == "nothing_to_change"
    assert await ledger(backend, account) == [
        ("purchase", 100), ("usage", -60), ("reversal", -100), ("reversal", 100)]
    await assert_reconciled(db, account)


async def test_a_lost_dispute_keeps_them_and_a_partial_one_takes_its_share(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str
) -> None:
    pi = uid("pi")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "100", pi)))
    dp = uid("dp")
    await post_stripe(http, stripe_dispute("charge.dispute.created", pi, 250, "needs_response",
                                           dp))
    assert await balance(backend, account) == 75  # a quarter of the payment disputed
    r = await post_stripe(http, stripe_dispute("charge.dispute.closed", pi, 250, "lost", dp))
    assert r.json()["result"] == "nothing_to_change"
    assert await balance(backend, account) == 75


async def test_dodo_dispute_before_its_payment_waits_then_applies_once(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pay, dispute = uid("pay"), uid("dsp")
    opened = dodo_event("dispute.opened", {"dispute_id": dispute, "payment_id": pay,
                                           "amount": "1000", "currency": "USD"})
    r = await post_dodo(http, opened)
    assert r.json()["result"] == "pending"
    r = await post_dodo(http, dodo_payment(account, "50", pay))
    assert r.json()["result"] == "fulfilled" and r.json()["account"]["balance"] == 0
    assert (await post_dodo(http, opened)).json()["result"] == "nothing_to_change"
    r = await post_dodo(http, dodo_event("dispute.won", {
        "dispute_id": dispute, "payment_id": pay, "amount": "1000", "currency": "USD"}))
    assert r.json()["result"] == "dispute_returned"
    assert await balance(backend, account) == 50
    assert await ledger(backend, account) == [
        ("purchase", 50), ("reversal", -50), ("reversal", 50)]
    await assert_reconciled(db, account)


async def test_a_refund_during_an_open_dispute_takes_the_credits_back_once(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    pi, dp = uid("pi"), uid("dp")
    await post_stripe(http, stripe_event("checkout.session.completed",
                                         session(account, "100", pi)))
    await post_stripe(http, stripe_dispute("charge.dispute.created", pi, 1000,
                                           "warning_needs_response", dp))
    assert await balance(backend, account) == 0
    # The merchant refunds during the inquiry: the refund takes the credits, the dispute
    # gives back what it had taken, so they are taken back once.
    r = await post_stripe(http, stripe_event("charge.refunded", charge(pi, 1000, 1000)))
    assert r.json()["result"] == "reversed"
    assert await balance(backend, account) == 0
    r = await post_stripe(http, stripe_dispute("charge.dispute.closed", pi, 1000,
                                               "warning_closed", dp))
    assert await balance(backend, account) == 0
    assert await ledger(backend, account) == [
        ("purchase", 100), ("reversal", -100), ("reversal", 100), ("reversal", -100)]
    await assert_reconciled(db, account)


@pytest.mark.parametrize("refund_first", [True, False])
async def test_a_dispute_and_a_refund_before_their_payment_take_it_back_once(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, account: str, refund_first: bool
) -> None:
    pay = uid("pay")
    events = [dodo_refund(pay, 500, partial=True),
              dodo_event("dispute.opened", {"dispute_id": uid("dsp"), "payment_id": pay})]
    for event in events if refund_first else events[::-1]:
        assert (await post_dodo(http, event)).json()["result"] == "pending"
    r = await post_dodo(http, dodo_payment(account, "100", pay))
    assert r.json()["result"] == "fulfilled"
    assert await balance(backend, account) == 0  # 50 refunded + the other 50 disputed


# ---------------------------------------------------------------- payments under review
# Listed by status, resolved once by an operator (credit the catalog's amount or a stated
# one, or dismiss), audited and pushed; a redelivery of the payment's events afterwards
# credits nothing more.


async def under_review(backend: httpx.AsyncClient, payment_id: str) -> Json:
    """The payment's entry in the needs_review list (walking every page)."""
    cursor = None
    while True:
        params: dict[str, str | int] = {"status": "needs_review", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await backend.get("/v1/payments", params=params)
        assert r.status_code == 200, r.text
        for p in r.json()["payments"]:
            if p["payment_id"] == payment_id:
                found: Json = p
                return found
        cursor = r.json()["next"]
        assert cursor is not None, f"{payment_id} is not under review"


async def resolve(backend: httpx.AsyncClient, review: int, action: str,
                  **body: Any) -> httpx.Response:
    return await backend.post(f"/v1/payments/reviews/{review}/{action}", json=body)


async def test_a_payment_without_an_account_is_credited_once_however_often_it_is_resolved(
    wapp: RunningApp, http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool,
    account: str,
) -> None:
    pi = uid("pi")
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(None, "12", pi, amount=500)))
    assert r.json()["result"] == "needs_review"
    listed = await under_review(backend, pi)
    assert (listed["status"], listed["account_id"], listed["credits"]) == ("needs_review", None, 12)
    assert (listed["amount_paid"], listed["currency"]) == (500, "usd")
    review = listed["review"]
    assert "account_id" in review["problem"] and review["resolution"] is None

    # Whose it is must be said; nothing is written until it is.
    r = await resolve(backend, review["id"], action="credit", note="support ticket 7")
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    assert "account_id" in r.json()["message"]
    assert (await under_review(backend, pi))["review"]["resolution"] is None

    token = mint_token(wapp.settings.token_secret, account, 600)[0]
    async with connect(wapp.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        async with asyncio.timeout(5):
            assert json.loads(await ws.recv())["balance"] == 0
        body = {"account_id": account, "note": "support ticket 7"}
        answers = await asyncio.gather(*(resolve(backend, review["id"], "credit", **body)
                                         for _ in range(8)))
        async with asyncio.timeout(5):
            frame = json.loads(await ws.recv())
    assert (frame["balance"], frame["change"]["kind"], frame["change"]["amount"],
            frame["change"]["reason"]) == (12, "purchase", 12, "purchase via stripe")
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    replays = [a.headers.get("idempotent-replayed") for a in answers]
    assert replays.count("true") == 7 and replays.count(None) == 1
    first = next(a.json() for a in answers if "idempotent-replayed" not in a.headers)
    resolution = first["payment"]["review"]["resolution"]
    assert (resolution["action"], resolution["account_id"], resolution["credits"]) == (
        "credit", account, 12)
    assert resolution["actor"] == "key1" and resolution["note"] == "support ticket 7"
    assert first["payment"]["status"] == "resolved" and first["account"]["balance"] == 12
    assert (first["transaction"]["id"], first["transaction"]["kind"]) == (
        resolution["transaction_id"], "purchase")
    assert all((a.json()["payment"], a.json()["transaction"]) == (
        first["payment"], first["transaction"]) for a in answers)

    # Another resolution of it conflicts; the provider's own events now change nothing.
    r = await resolve(backend, review["id"], action="dismiss", note="changed my mind")
    assert (r.status_code, r.json()["error"]) == (409, "idempotency_conflict")
    r = await post_stripe(http, stripe_event("checkout.session.completed",
                                             session(None, "12", pi, amount=500)))
    assert r.json()["result"] == "duplicate"
    r = await post_stripe(http, stripe_event(
        "payment_intent.succeeded", payment_intent(pi, {"account_id": account, "credits": "12",
                                                        "package": "c12"}, amount=500)))
    assert r.json()["result"] == "duplicate"
    assert await ledger(backend, account) == [("purchase", 12)]
    assert await balance(backend, account) == 12
    await assert_reconciled(db, account)

    # It is a credited payment now, and its review is in the resolved list and the audit log.
    r = await backend.get("/v1/payments", params={"status": "credited", "account_id": account})
    assert [(p["payment_id"], p["credits"], p["review"]) for p in r.json()["payments"]] == [
        (pi, 12, None)]
    r = await backend.get("/v1/payments", params={"status": "resolved", "account_id": account})
    assert [p["review"]["id"] for p in r.json()["payments"]] == [review["id"]]
    r = await backend.get("/v1/audit", params={"account_id": account})
    entries = r.json()["entries"]
    assert [(e["action"], e["actor"], e["subject"]) for e in entries] == [
        ("review_resolve", "key1", str(review["id"]))]
    assert entries[0]["detail"]["note"] == "support ticket 7"
    assert entries[0]["transaction_id"] == resolution["transaction_id"]


async def test_stated_credits_and_dismissal(
    http: httpx.AsyncClient, backend: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    # Metadata claims 50 credits for a 30-credit package: the catalog's 30 are offered.
    pi = uid("pi")
    bad = session(account, "30", pi, amount=500)
    bad["metadata"]["credits"] = "50"
    r = await post_stripe(http, stripe_event("checkout.session.completed", bad))
    assert r.json()["result"] == "needs_review"
    listed = await under_review(backend, pi)
    assert (listed["account_id"], listed["credits"]) == (account, 30)
    r = await resolve(backend, listed["review"]["id"], action="credit", credits=40,
                      note="goodwill: 10 extra")
    assert r.status_code == 200, r.text
    assert r.json()["account"]["balance"] == 40

    # An unknown currency cannot be priced: credits must be stated, or it is dismissed.
    pi2 = uid("pi")
    odd = session(account, None, pi2, amount=500)
    odd["currency"] = "xts"
    r = await post_stripe(http, stripe_event("checkout.session.completed", odd))
    assert r.json()["result"] == "needs_review"
    listed = await under_review(backend, pi2)
    assert listed["credits"] is None
    review = listed["review"]["id"]
    r = await resolve(backend, review, action="credit", note="no amount")
    assert r.status_code == 422 and "credits" in r.json()["message"]
    r = await resolve(backend, review, action="dismiss", credits=5, note="x")
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")  # unknown field
    r = await resolve(backend, review, action="dismiss", note="test payment, refunded by hand")
    assert r.status_code == 200, r.text
    assert r.json()["account"] is None and r.json()["transaction"] is None
    assert r.json()["payment"]["review"]["resolution"]["action"] == "dismiss"
    assert await balance(backend, account) == 40
    r = await resolve(backend, review, action="dismiss", note="test payment, refunded by hand")
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"

    r = await resolve(backend, 2**62, action="dismiss", note="x")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await backend.get("/v1/payments", params={"status": "lost"})
    assert r.status_code == 422
    r = await backend.get("/v1/payments", params={"status": "credited", "cursor": "zz"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    r = await backend.get("/v1/audit", params={"account_id": account})
    assert [e["action"] for e in r.json()["entries"]] == ["review_resolve", "review_resolve"]
    await assert_reconciled(db, account)
