"""App webhooks against a real local HTTP receiver (not a stand-in for our dispatcher):
signed per Standard Webhooks, retried with the same webhook-id, never lost when an instance
is killed mid-delivery, never delivered twice by two instances; low-balance crossings
decided once under any concurrency, and only by a movement of `available`."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from server.auth import mint_token
from server.dev.servers import free_port
from server.ledger import Ledger
from tests.conftest import RunningApp, StartApp, age_plan, key, scraped
from tests.receiver import SECRET, Receiver

REPO = Path(__file__).resolve().parent.parent
CATALOG: dict[str, Any] = {
    "prices": {"generate_image": 5}, "alerts": {"low_balance": 50},
    "plans": {"alerts_day": {"allowance": 100, "period": "day", "low_balance": 30}}}
ALERTS = ("balance.low", "balance.depleted", "balance.recovered")


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("alerts") / "catalog.json"
    path.write_text(json.dumps(CATALOG))
    return str(path)


StartHooked = Callable[..., Awaitable[RunningApp]]


@pytest.fixture
def start_hooked(start_app: StartApp, receiver: Receiver, catalog_file: str) -> StartHooked:
    async def start(**overrides: Any) -> RunningApp:
        values: dict[str, Any] = {
            "catalog_file": catalog_file, "app_webhook_url": receiver.url,
            "app_webhook_secret": SECRET,
            "app_webhook_events": ("balance.low", "balance.depleted", "balance.recovered",
                                   "hold.expired", "purchase.completed"),
            "app_webhook_timeout": 2.0, "outbox_lease": 3.0,
            "app_webhook_retry": (0.2, 0.2, 0.2, 0.2),
            **overrides,
        }
        return await start_app(**values)
    return start


async def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


async def post(app: RunningApp, path: str, body: dict[str, Any]) -> httpx.Response:
    async with app.client() as c:
        return await c.post(path, json={"idempotency_key": key(), **body})


async def cross_low(c: httpx.AsyncClient, account: str) -> None:
    """One real crossing, so one balance.low: up to 100 (a first credit is no recovery),
    then down to 40, below the catalog's 50."""
    for path, body in (("credit", {"amount": 100, "kind": "grant"}),
                       ("debit", {"amount": 60, "reason": "x"})):
        r = await c.post(f"/v1/accounts/{account}/{path}",
                         json={"idempotency_key": key(), **body})
        assert r.status_code == 200, r.text


async def test_300_debits_over_two_instances_cross_the_threshold_once(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    one, two = await start_hooked(), await start_hooked()
    try:
        r = await post(one, f"/v1/accounts/{account}/credit", {"amount": 320, "kind": "grant"})
        assert r.status_code == 200 and r.json()["account"]["low"] is False
        async with one.client() as c1, two.client() as c2:
            answers = await asyncio.gather(*(
                (c1, c2)[i % 2].post(f"/v1/accounts/{account}/debit", json={
                    "amount": 1, "reason": "x", "idempotency_key": key()})
                for i in range(300)))
        assert {a.status_code for a in answers} == {200}
        await wait_for(lambda: len(receiver.of(account)) >= 1)
        await asyncio.sleep(0.5)  # a second one would have come by now
        rows = await db.fetch("SELECT type, data FROM events WHERE account_id = $1", account)
        assert [r["type"] for r in rows] == ["balance.low"]
        assert json.loads(rows[0]["data"])["available"] == 49  # the debit that crossed
        assert [r.type for r in receiver.of(account)] == ["balance.low"]
        assert receiver.forged == 0
    finally:
        await one.stop()
        await two.stop()


async def test_depleted_and_recovered_and_the_frames_low(
    start_hooked: StartHooked, receiver: Receiver, account: str
) -> None:
    app = await start_hooked()
    try:
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 100, "kind": "grant"})
        token = mint_token(app.settings.token_secret, account, 600)[0]
        async with connect(f"{app.ws_url}?token={token}") as ws:
            snapshot = json.loads(await ws.recv())
            assert snapshot["low"] is False
            await post(app, f"/v1/accounts/{account}/debit", {"amount": 100, "reason": "all"})
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (frame["available"], frame["low"]) == (0, True)
            await post(app, f"/v1/accounts/{account}/credit", {"amount": 60, "kind": "grant"})
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (frame["available"], frame["low"]) == (60, False)
        await wait_for(lambda: len(receiver.of(account)) >= 3)
        # ok -> depleted crosses the threshold and zero; 60 >= 50 is a recovery. Deliveries
        # run concurrently, so the receiver orders them by `version`, as an app would.
        got = sorted(receiver.of(account),
                     key=lambda r: (r.data["version"], r.type != "balance.low"))
        assert [r.type for r in got] == ["balance.low", "balance.depleted", "balance.recovered"]
        # An account's own threshold wins over the catalog's, and is pushed; setting it
        # is no movement, so it tells the app nothing (API.md v1.2).
        async with app.client() as c:
            r = await c.put(f"/v1/accounts/{account}/alerts", json={"low_balance": 80})
        assert r.status_code == 200 and r.json()["account"]["low"] is True
        # 60 -> 100 ends a low nobody was told of: no recovery; 100 -> 70 crosses 80.
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 40, "kind": "grant"})
        await post(app, f"/v1/accounts/{account}/debit", {"amount": 30, "reason": "x"})
        await wait_for(lambda: len(receiver.of(account)) >= 4)
        await asyncio.sleep(0.3)
        assert len(receiver.of(account)) == 4
        last = max(receiver.of(account), key=lambda r: r.data["version"])
        assert (last.type, last.data["available"], last.data["threshold"]) == (
            "balance.low", 70, 80)
    finally:
        await app.stop()


async def test_a_failing_receiver_gets_every_attempt_with_one_webhook_id(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    receiver.answers = [500, 500, 500]  # then 200
    app = await start_hooked()
    latency = "balance_app_webhook_delivery_seconds"
    try:
        delivered = await scraped(app, f"{latency}_count") or 0.0
        took = await scraped(app, f"{latency}_sum") or 0.0
        async with app.client() as c:
            await cross_low(c, account)
        await wait_for(lambda: len(receiver.of(account)) >= 4)
        # One delivery, timed from the event's creation: three retries 0.2 s apart included.
        assert await scraped(app, f"{latency}_count") == delivered + 1
        assert (await scraped(app, f"{latency}_sum") or 0.0) - took >= 0.6
        got = receiver.of(account)
        assert len(got) == 4 and len({g.webhook_id for g in got}) == 1
        # Every attempt is the same event: the same body, not a state evaluated again.
        assert len({json.dumps([g.type, g.data], sort_keys=True) for g in got}) == 1
        # The 4th attempt is recorded once its answer is back: poll the list until it is.
        async with app.client() as c:
            for _ in range(100):
                events = (await c.get("/v1/events", params={"limit": 200})).json()["events"]
                event = next(e for e in events if e["webhook_id"] == got[0].webhook_id)
                if event["status"] == "delivered":
                    break
                await asyncio.sleep(0.05)
        assert (event["status"], event["attempts"]) == ("delivered", 4)
        assert [a["status"] for a in event["attempt_log"]] == [500, 500, 500, 200]
        # Asked again, it is sent again, with the same id.
        async with app.client() as c:
            r = await c.post(f"/v1/events/{event['id']}/retry")
            assert r.status_code == 200
            assert (await c.post("/v1/events/999999999/retry")).status_code == 404
        await wait_for(lambda: len(receiver.of(account)) >= 5)
        assert receiver.of(account)[-1].webhook_id == got[0].webhook_id
    finally:
        await app.stop()


async def test_after_the_last_retry_an_event_is_failed(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    receiver.answers = [503] * 3
    app = await start_hooked(app_webhook_retry=(0.1, 0.1))
    try:
        async with app.client() as c:
            await cross_low(c, account)
        await wait_for(lambda: len(receiver.of(account)) >= 3)
        await asyncio.sleep(0.5)
        status = await db.fetchval("SELECT status FROM events WHERE account_id = $1", account)
        assert status == "failed" and len(receiver.of(account)) == 3
        async with app.client() as c:
            failed = (await c.get("/v1/events", params={"status": "failed"})).json()["events"]
        assert any(e["account_id"] == account for e in failed)
    finally:
        await app.stop()


async def test_two_instances_deliver_each_event_once(
    start_hooked: StartHooked, receiver: Receiver
) -> None:
    one, two = await start_hooked(), await start_hooked()
    accounts = [f"once-{key()[5:15]}" for _ in range(60)]
    try:
        # Each account crosses the threshold once, so one balance.low each.
        async with one.client() as c1, two.client() as c2:
            await asyncio.gather(*(cross_low((c1, c2)[i % 2], a)
                                   for i, a in enumerate(accounts)))
        await wait_for(lambda: sum(len(receiver.of(a)) for a in accounts) >= 60)
        await asyncio.sleep(0.5)
        ids = [r.webhook_id for a in accounts for r in receiver.of(a)]
        assert len(ids) == len(set(ids)) == 60
    finally:
        await one.stop()
        await two.stop()


async def test_an_instance_killed_mid_delivery_loses_nothing(
    start_hooked: StartHooked, receiver: Receiver, migrated: str, redis: Any,
    catalog_file: str, db: asyncpg.Pool, account: str, tmp_path: Path
) -> None:
    """A real `balance-server serve` process claims the event and is SIGKILLed while the
    receiver holds its request; after its lease, another instance delivers it."""
    receiver.answers = ["hang"]
    port = free_port()
    service_key = "sk_test_" + secrets.token_urlsafe(16)
    env = {**os.environ, "DATABASE_URL": migrated, "BALANCE_SERVICE_KEYS": service_key,
           "BALANCE_TOKEN_SECRET": secrets.token_urlsafe(48), "PORT": str(port),
           "BALANCE_CATALOG_FILE": catalog_file, "BALANCE_APP_WEBHOOK_URL": receiver.url,
           "BALANCE_APP_WEBHOOK_SECRET": SECRET, "BALANCE_APP_WEBHOOK_TIMEOUT": "1.5",
           "BALANCE_OUTBOX_LEASE": "2"}
    log = (tmp_path / "serve.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "serve", cwd=REPO, env=env, stdout=log,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {service_key}"}) as c:
            for _ in range(300):
                try:
                    if (await c.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            await cross_low(c, account)
        await wait_for(lambda: len(receiver.of(account)) == 1)  # it is mid-delivery
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        first = receiver.of(account)[0].webhook_id
        survivor = await start_hooked()
        try:
            await wait_for(lambda: len(receiver.of(account)) == 2, 15)
            assert receiver.of(account)[1].webhook_id == first
            status = await db.fetchval("SELECT status FROM events WHERE webhook_id = $1", first)
            for _ in range(100):
                if status == "delivered":
                    break
                await asyncio.sleep(0.05)
                status = await db.fetchval("SELECT status FROM events WHERE webhook_id = $1",
                                           first)
            assert status == "delivered"
        finally:
            await survivor.stop()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def test_an_instance_without_the_url_leaves_the_subscription_alone(
    start_app: StartApp, db: asyncpg.Pool, catalog_file: str
) -> None:
    """A push-only instance (no BALANCE_APP_WEBHOOK_URL) starting beside those that deliver
    must not turn their delivery off: it writes the catalog's threshold, not the types."""
    await db.execute("SELECT balance_configure($1::text[], 50)", list(ALERTS))
    app = await start_app(catalog_file=catalog_file)
    try:
        assert await db.fetchval("SELECT events FROM settings") == list(ALERTS)
    finally:
        await app.stop()


async def test_without_a_subscription_nothing_is_written(
    start_app: StartApp, db: asyncpg.Pool, account: str, catalog_file: str
) -> None:
    # No instance of this deployment delivers app webhooks (an instance without
    # BALANCE_APP_WEBHOOK_URL leaves the subscription to those with one).
    await db.execute("UPDATE settings SET events = '{}'")
    app = await start_app(catalog_file=catalog_file)  # no BALANCE_APP_WEBHOOK_URL
    try:
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 10, "kind": "grant"})
        await post(app, f"/v1/accounts/{account}/debit", {"amount": 10, "reason": "x"})
        assert await db.fetchval("SELECT count(*) FROM events WHERE account_id = $1",
                                 account) == 0
        # The standing is still kept, for the frames' `low`.
        async with app.client() as c:
            assert (await c.get(f"/v1/accounts/{account}")).json()["low"] is True
    finally:
        await app.stop()


async def alert_types(db: asyncpg.Pool, account: str) -> list[str]:
    """The alerts written for the account, in the order they were decided."""
    rows = await db.fetch("SELECT type FROM events WHERE account_id = $1 AND type = ANY($2)"
                          " ORDER BY id", account, list(ALERTS))
    return [r["type"] for r in rows]


async def settled_alerts(db: asyncpg.Pool, receiver: Receiver, account: str,
                         delivered: int) -> list[str]:
    """alert_types once the receiver has `delivered` of the account's webhooks and anything
    else would have been written by now (a crossing that must not happen is a row that
    never comes: there is no moment to wait for)."""
    await wait_for(lambda: len(receiver.of(account)) >= delivered)
    await asyncio.sleep(0.5)
    return await alert_types(db, account)


@asynccontextmanager
async def server_session(db: asyncpg.Pool) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
    """A transaction under the settings a hooked server writes (schema.sql `settings`: the
    alerts subscribed, the catalog's threshold of 50), for paths driven here in SQL."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT balance_configure($1::text[], 50)", list(ALERTS))
        yield conn


async def test_a_threshold_set_on_a_new_account_is_silent_until_a_debit_crosses(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    app = await start_hooked()  # no welcome credits: the account starts at 0
    try:
        async with app.client() as c:
            r = await c.put(f"/v1/accounts/{account}/alerts", json={"low_balance": 50})
        assert r.status_code == 200 and r.json()["account"]["low"] is True
        # Up from a standing nobody was told of: no recovery.
        r = await post(app, f"/v1/accounts/{account}/credit", {"amount": 100, "kind": "grant"})
        assert r.json()["account"]["low"] is False
        r = await post(app, f"/v1/accounts/{account}/debit", {"amount": 60, "reason": "x"})
        assert r.json()["account"]["low"] is True
        assert await settled_alerts(db, receiver, account, 1) == ["balance.low"]
        assert [(g.type, g.data["available"]) for g in receiver.of(account)] == [
            ("balance.low", 40)]
        # Down to 0: depleted, and no second low; back up: recovered, as it was told.
        await post(app, f"/v1/accounts/{account}/debit", {"amount": 40, "reason": "x"})
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 100, "kind": "grant"})
        await wait_for(lambda: len(receiver.of(account)) >= 3)
        assert await alert_types(db, account) == [
            "balance.low", "balance.depleted", "balance.recovered"]
    finally:
        await app.stop()


async def test_a_plan_assigned_to_a_new_account_is_silent(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    app = await start_hooked()
    try:
        async with app.client() as c:
            r = await c.put(f"/v1/accounts/{account}/plan",
                            json={"plan": "alerts_day", "idempotency_key": key()})
            assert r.status_code == 200 and r.json()["account"]["low"] is False
            assert r.json()["account"]["available"] == 100
        # The plan's threshold (30) is crossed by a debit: one low.
        await post(app, f"/v1/accounts/{account}/debit", {"amount": 80, "reason": "x"})
        assert await settled_alerts(db, receiver, account, 1) == ["balance.low"]
        # Removing the plan takes its allowance away (20 -> 0): silently too.
        async with app.client() as c:
            r = await c.put(f"/v1/accounts/{account}/plan",
                            json={"plan": None, "idempotency_key": key()})
            assert r.status_code == 200
            assert (r.json()["account"]["available"], r.json()["account"]["low"]) == (0, True)
        assert await settled_alerts(db, receiver, account, 1) == ["balance.low"]
    finally:
        await app.stop()


async def test_welcome_credits_below_the_threshold_are_no_crossing(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    app = await start_hooked(welcome_credits=10)
    try:
        async with app.client() as c:
            r = await c.get(f"/v1/accounts/{account}")
            assert (r.json()["available"], r.json()["low"]) == (10, True)
        await post(app, f"/v1/accounts/{account}/debit", {"amount": 10, "reason": "x"})
        assert await settled_alerts(db, receiver, account, 1) == ["balance.depleted"]
    finally:
        await app.stop()


async def test_a_hold_whose_credits_expired_releases_without_a_crossing(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    """Releasing it gives the credits back and takes them away as expired in one
    transaction: available stays at 0, so nothing crosses (not recovered, then low)."""
    app = await start_hooked()
    try:
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        await post(app, f"/v1/accounts/{account}/credit",
                   {"amount": 100, "kind": "grant", "expires_at": soon})
        r = await post(app, f"/v1/accounts/{account}/holds",
                       {"amount": 100, "reason": "job", "ttl_seconds": 3600})
        hold = r.json()["hold"]["id"]
        await wait_for(lambda: len(receiver.of(account)) >= 2)  # low, depleted: told
        expired_held = "SELECT expired_held FROM accounts WHERE account_id = $1"
        for _ in range(200):  # the sweep expires the lot while the hold reserves it
            if await db.fetchval(expired_held, account) == 100:
                break
            await asyncio.sleep(0.05)
        assert await db.fetchval(expired_held, account) == 100
        async with app.client() as c:
            r = await c.post(f"/v1/holds/{hold}/release")
            assert r.status_code == 200, r.text
            assert (r.json()["account"]["available"], r.json()["account"]["low"]) == (0, True)
        assert await settled_alerts(db, receiver, account, 2) == [
            "balance.low", "balance.depleted"]
    finally:
        await app.stop()


async def test_a_renewal_that_expires_then_grants_crosses_nothing(
    start_hooked: StartHooked, db: asyncpg.Pool, account: str
) -> None:
    """The unused allowance expires (100 -> 0) and the next one arrives (0 -> 100) in one
    transaction: no low, depleted and recovered, and no auto top-up at 0. Renewed here,
    in a transaction with the server's session settings, so no other instance's jobs (of
    other test modules, subscribed to nothing) can take the renewal first."""
    app = await start_hooked()  # writes the catalog's plans
    try:
        async with app.client() as c:
            r = await c.put(f"/v1/accounts/{account}/plan",
                            json={"plan": "alerts_day", "idempotency_key": key()})
            assert r.status_code == 200
        before = await alert_types(db, account)
        async with server_session(db) as conn:
            # Armed at 100 against 50: configuring it is no movement, so nothing starts.
            await conn.execute("SELECT balance_set_auto_top_up($1, 0, 'starter', 50,"
                               " 'cus_x', 'pm_x')", account)
            await age_plan(conn, account, 1)
            kinds = [r["kind"] for r in await conn.fetch(
                "SELECT (r).kind FROM balance_renew(500) r WHERE (r).account_id = $1",
                account)]
            assert kinds == ["expiry", "allowance"]
        assert await db.fetchval("SELECT balance - held FROM accounts WHERE account_id = $1",
                                 account) == 100
        assert await alert_types(db, account) == before
        assert await db.fetchval("SELECT count(*) FROM top_ups WHERE account_id = $1",
                                 account) == 0
    finally:
        await app.stop()


async def test_a_purchase_whose_refund_came_first_crosses_nothing(
    db: asyncpg.Pool, account: str
) -> None:
    """The refund waits for its payment; the payment's webhook then credits it and takes it
    back in one transaction: 0 -> 100 -> 0 is no movement (not low and depleted)."""
    payment = f"pi_{account}"
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_account($1, 0)", account)
        assert await conn.fetchval(
            "SELECT (balance_refund('stripe', $1, $1 || '@1000', 1000, 1000, true, true,"
            " 'evt_r', 0, 'debt')).body ->> 'result'", payment) == "pending"
    async with server_session(db) as conn:
        body = json.loads(await conn.fetchval(
            "SELECT (balance_purchase('stripe', $1, $2, 100, 1000, 'usd', 'evt_p', NULL, 0,"
            " 'debt')).body::text", payment, account))
        assert (body["account"]["available"], body["credits_reversed"]) == (0, 100)
    assert await alert_types(db, account) == []


async def test_a_refund_during_a_dispute_crosses_nothing(
    db: asyncpg.Pool, account: str
) -> None:
    """A full refund while a full dispute is open: the dispute gives its credits back and the
    refund takes them in one transaction, 100 -> 200 -> 100 against 150: no recovered-then-low."""
    payment = f"pi_{account}"

    async def step(sql: str, *args: Any) -> None:
        async with server_session(db) as conn:
            await conn.execute(sql, *args)

    post_sql = "SELECT balance_post($1, 0, $2, '\\x01'::bytea, $3, $4, 'r', NULL, NULL, 'debt')"
    await step(post_sql, account, key(), "grant", 300)
    await step("SELECT balance_set_alerts($1, 0, 150)", account)
    await step(post_sql, account, key(), "usage", -200)  # 100: low
    await step("SELECT balance_purchase('stripe', $1, $2, 100, 1000, 'usd', 'evt_p', NULL, 0,"
               " 'debt')", payment, account)  # 200: recovered
    await step("SELECT balance_dispute('stripe', $1, 'dp_' || $1, 1000, 'open', 'evt_d', 0)",
               payment)  # 100: low
    assert await alert_types(db, account) == [
        "balance.low", "balance.recovered", "balance.low"]
    await step("SELECT balance_refund('stripe', $1, $1 || '@1000', 1000, 1000, true, true,"
               " 'evt_r', 0, 'debt')", payment)
    assert await db.fetchval("SELECT balance - held FROM accounts WHERE account_id = $1",
                             account) == 100
    assert await alert_types(db, account) == [
        "balance.low", "balance.recovered", "balance.low"]


async def test_a_hold_and_a_grant_expiring_in_one_sweep_cross_nothing(
    db: asyncpg.Pool, account: str
) -> None:
    """The hold gives 100 back and the grant takes 100 away in the same sweep: 0 -> 100 -> 0
    is no movement (not recovered, then low and depleted). Swept here, in a transaction that
    holds the rows, so no running instance's sweep splits them."""
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'grant', 100, 'r',"
                           " NULL, now() + interval '1 day', 'available')", account, key())
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_hold($1, 0, $2, '\\x02'::bytea, 100, 3600, 'job',"
                           " NULL)", account, key())  # 0: low and depleted, told
    assert await alert_types(db, account) == ["balance.low", "balance.depleted"]
    async with server_session(db) as conn:
        await conn.execute("UPDATE holds SET expires_at = now() - interval '1 second'"
                           " WHERE account_id = $1", account)
        await conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second'"
                           " WHERE account_id = $1", account)
        kinds = [r["kind"] for r in await conn.fetch(
            "SELECT (r).kind FROM balance_sweep(500) r WHERE (r).account_id = $1", account)]
        assert kinds == ["hold_expired", "expiry"]
    assert await db.fetchval("SELECT balance - held FROM accounts WHERE account_id = $1",
                             account) == 0
    assert await alert_types(db, account) == ["balance.low", "balance.depleted"]


async def test_arming_auto_top_up_below_its_threshold_starts_nothing_until_a_movement(
    db: asyncpg.Pool, account: str
) -> None:
    requests = "SELECT count(*) FROM top_ups WHERE account_id = $1"
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_set_auto_top_up($1, 0, 'starter', 50, 'cus_x',"
                           " 'pm_x')", account)  # a new account, at 0
    assert await db.fetchval(requests, account) == 0
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'grant', 10, 'r',"
                           " NULL, NULL, 'available')", account, key())  # 10: still below
    assert await db.fetchval(requests, account) == 1
    # Off again: no Stripe-configured instance of a later test takes the request.
    await db.execute("SELECT balance_set_auto_top_up($1, 0, NULL, NULL, NULL, NULL)", account)


async def test_a_plan_removed_below_an_armed_top_up_starts_it_and_tells_nothing(
    start_hooked: StartHooked, db: asyncpg.Pool, account: str
) -> None:
    """A plan's change is silent to the app (API.md), but the allowance it took away is a
    movement of `available`: a top-up armed above where it ends starts, once."""
    app = await start_hooked()  # writes the catalog's plans
    try:
        async with app.client() as c:
            r = await c.put(f"/v1/accounts/{account}/plan",
                            json={"plan": "alerts_day", "idempotency_key": key()})
            assert r.status_code == 200 and r.json()["account"]["available"] == 100
    finally:
        await app.stop()
    requests = "SELECT count(*) FROM top_ups WHERE account_id = $1"
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_set_auto_top_up($1, 0, 'starter', 50, 'cus_x',"
                           " 'pm_x')", account)
        await conn.execute("SELECT balance_set_plan($1, 0, $2, '\\x01'::bytea, NULL, NULL)",
                           account, key())
        assert await conn.fetchval("SELECT balance - held FROM accounts WHERE account_id = $1",
                                   account) == 0
    assert await db.fetchval(requests, account) == 1
    assert await alert_types(db, account) == []
    await db.execute("SELECT balance_set_auto_top_up($1, 0, NULL, NULL, NULL, NULL)", account)


async def test_a_change_begun_for_alerts_and_never_ended_cannot_commit(
    db: asyncpg.Pool, account: str
) -> None:
    """Left set, alert_from would silence every later crossing of the account: the
    commit that would leave it fails, and nothing of its transaction stays."""
    await db.execute("SELECT balance__ensure($1, 0)", account)
    with pytest.raises(asyncpg.RaiseError, match="BL002"):
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT balance__alerts_begin($1)", account)
            await conn.execute("UPDATE accounts SET low_balance = 7 WHERE account_id = $1",
                               account)
    row = await db.fetchrow("SELECT alert_from, low_balance FROM accounts WHERE account_id = $1",
                            account)
    assert row is not None and (row["alert_from"], row["low_balance"]) == (None, None)
    # Begun and ended in one transaction: commits.
    async with db.acquire() as conn, conn.transaction():
        assert await conn.fetchval("SELECT balance__alerts_begin($1)", account) is True
        await conn.execute("SELECT balance__alerts_end($1, false)", account)


# Alert floors (schema.sql 020_alert_floor): while an account stands 'ok', the alert trigger
# skips the movements that stay at or above its floor. A threshold changed outside the row
# must make the floor unknown, or a crossing of the new threshold would be skipped.

FLOOR = "SELECT alert_floor FROM accounts WHERE account_id = $1"


def catalog_at(tmp_path: Path, default: int, plan: int) -> str:
    """The module's catalog with another default threshold, and a plan of this test's own
    (so no other test meets its threshold) at `plan`."""
    path = tmp_path / f"catalog-{default}-{plan}.json"
    path.write_text(json.dumps({
        **CATALOG, "alerts": {"low_balance": default},
        "plans": {**CATALOG["plans"], "floor_day": {"allowance": 100, "period": "day",
                                                    "low_balance": plan}}}))
    return str(path)


async def test_a_new_default_threshold_reaches_an_account_whose_floor_was_set(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str,
    tmp_path: Path
) -> None:
    app = await start_hooked()  # the catalog's 50
    try:
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 600, "kind": "grant"})
        r = await post(app, f"/v1/accounts/{account}/debit", {"amount": 10, "reason": "x"})
        assert r.json()["account"]["low"] is False
        assert await db.fetchval(FLOOR, account) == 50  # 590: later debits skip the trigger
    finally:
        await app.stop()
    # A restart with a catalog whose default is 500: the floor made from 50 is forgotten
    # (and forgetting it, no movement, ran no trigger that would make it again).
    app = await start_hooked(catalog_file=catalog_at(tmp_path, 500, 30))
    try:
        assert await db.fetchval(FLOOR, account) is None
        r = await post(app, f"/v1/accounts/{account}/debit", {"amount": 100, "reason": "x"})
        assert (r.json()["account"]["available"], r.json()["account"]["low"]) == (490, True)
        assert await settled_alerts(db, receiver, account, 1) == ["balance.low"]
        got = receiver.of(account)[0].data
        assert (got["available"], got["threshold"]) == (490, 500)
        # Standing below it, every movement runs the trigger: down again crosses nothing.
        r = await post(app, f"/v1/accounts/{account}/debit", {"amount": 10, "reason": "x"})
        assert r.json()["account"]["low"] is True
        assert await settled_alerts(db, receiver, account, 1) == ["balance.low"]
        assert await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1",
                              account) == []
    finally:
        await app.stop()
        await db.execute("SELECT balance_configure(NULL, 50)")
    # A lower default forgets nothing: a floor above the threshold only runs the trigger.
    assert await db.fetchval(FLOOR, account) == 500


async def test_a_raised_default_waits_for_the_accounts_lock_only_so_long_then_retries(
    db: asyncpg.Pool,
) -> None:
    """Forgetting floors takes a lock on accounts that every movement would queue behind:
    it waits at most 5 s for a transaction in its way, then the whole configuration is
    given up (nothing changed) and Ledger.write_settings leaves it for the jobs loop."""
    ledger = Ledger(db, 0)
    ledger.configure(None, 70)  # above the module's 50: floors are forgotten
    async with db.acquire() as blocker:
        tx = blocker.transaction()
        await tx.start()
        try:  # an account row being updated: ROW EXCLUSIVE on accounts until it ends
            await blocker.execute("UPDATE accounts SET updated_at = updated_at"
                                  " WHERE account_id = (SELECT min(account_id) FROM accounts)")
            started = time.monotonic()
            await ledger.write_settings()
            assert 4.5 < time.monotonic() - started < 15
            assert await db.fetchval("SELECT low_balance FROM settings") == 50
        finally:
            await tx.rollback()
    try:
        await ledger.write_settings()  # the jobs loop's next try
        assert await db.fetchval("SELECT low_balance FROM settings") == 70
    finally:
        await db.execute("SELECT balance_configure(NULL, 50)")


async def test_a_plan_threshold_changed_by_a_sync_reaches_its_accounts(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str,
    tmp_path: Path
) -> None:
    other = f"{account}-own"  # on the plan too, with a threshold of its own: kept
    app = await start_hooked(catalog_file=catalog_at(tmp_path, 50, 30))
    try:
        async with app.client() as c:
            for who in (account, other):
                r = await c.put(f"/v1/accounts/{who}/plan",
                                json={"plan": "floor_day", "idempotency_key": key()})
                assert r.status_code == 200 and r.json()["account"]["available"] == 100
            r = await c.put(f"/v1/accounts/{other}/alerts", json={"low_balance": 20})
            assert r.status_code == 200
        r = await post(app, f"/v1/accounts/{account}/debit", {"amount": 10, "reason": "x"})
        assert r.json()["account"]["low"] is False
        await post(app, f"/v1/accounts/{other}/debit", {"amount": 10, "reason": "x"})
        assert [await db.fetchval(FLOOR, who) for who in (account, other)] == [30, 20]
    finally:
        await app.stop()
    app = await start_hooked(catalog_file=catalog_at(tmp_path, 50, 85))
    try:
        assert [await db.fetchval(FLOOR, who) for who in (account, other)] == [None, 20]
        r = await post(app, f"/v1/accounts/{account}/debit", {"amount": 10, "reason": "x"})
        assert (r.json()["account"]["available"], r.json()["account"]["low"]) == (80, True)
        assert await settled_alerts(db, receiver, account, 1) == ["balance.low"]
        assert receiver.of(account)[0].data["threshold"] == 85
        r = await post(app, f"/v1/accounts/{other}/debit", {"amount": 10, "reason": "x"})
        assert r.json()["account"]["low"] is False
    finally:
        await app.stop()
    # Synced again unchanged: nothing is forgotten.
    await (await start_hooked(catalog_file=catalog_at(tmp_path, 50, 85))).stop()
    assert await db.fetchval(FLOOR, account) == 85


async def test_an_auto_top_up_starts_when_a_debit_crosses_it_above_the_floor(
    db: asyncpg.Pool, account: str
) -> None:
    requests = "SELECT count(*) FROM top_ups WHERE account_id = $1"
    debit = ("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'usage', $3, 'r', NULL, NULL,"
             " 'available')")
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'grant', 300, 'r',"
                           " NULL, NULL, 'available')", account, key())
        await conn.execute(debit, account, key(), -10)
    assert await db.fetchval(FLOOR, account) == 50  # the catalog's threshold
    async with server_session(db) as conn:
        await conn.execute("SELECT balance_set_auto_top_up($1, 0, 'starter', 200, 'cus_x',"
                           " 'pm_x')", account)
    assert await db.fetchval(FLOOR, account) == 200  # armed: the floor rises to it
    async with server_session(db) as conn:
        await conn.execute(debit, account, key(), -50)  # 240: above it, skipped
    assert await db.fetchval(requests, account) == 0
    async with server_session(db) as conn:
        await conn.execute(debit, account, key(), -50)  # 190: below it
    assert await db.fetchval(requests, account) == 1
    assert await db.fetchval(FLOOR, account) == 50  # disarmed until the top-up ends
    assert await alert_types(db, account) == []
    assert await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1",
                          account) == []
    # Off again: no Stripe-configured instance of a later test takes the request.
    await db.execute("SELECT balance_set_auto_top_up($1, 0, NULL, NULL, NULL, NULL)", account)


async def test_transaction_created_only_while_subscribed(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    """Subscribed, each ledger row is one transaction.created (a purchase's too, beside its
    purchase.completed); not subscribed, the trigger that writes it is disabled, and the
    subscription set by balance_configure switches it, in its transaction."""
    created = ("SELECT count(*) FROM events WHERE account_id = $1"
               " AND type = 'transaction.created'")
    enabled = ("SELECT tgenabled <> 'D' FROM pg_trigger"
               " WHERE tgname = 'transactions_created'")
    debit = ("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'usage', -1, 'r', NULL, NULL,"
             " 'available')")
    was = await db.fetchval("SELECT events FROM settings")
    app = await start_hooked(app_webhook_events=("transaction.created", "purchase.completed"))
    try:
        assert await db.fetchval(enabled) is True
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 10, "kind": "grant"})
        await post(app, f"/v1/accounts/{account}/debit", {"amount": 1, "reason": "x"})
        await db.execute("SELECT balance_purchase('stripe', $1, $2, 100, 1000, 'usd', 'evt_p',"
                         " NULL, 0, 'debt')", f"pi_{account}", account)
        await wait_for(lambda: len(receiver.of(account)) >= 4)
        await asyncio.sleep(0.3)
        got = sorted(receiver.of(account), key=lambda r: (r.data.get("version", 0), r.type))
        assert [(g.type, g.data["kind"]) for g in got] == [
            ("transaction.created", "grant"), ("transaction.created", "usage"),
            ("purchase.completed", "purchase"), ("transaction.created", "purchase")]
    finally:
        await app.stop()
    try:
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT balance_configure($1::text[], 50)", list(ALERTS))
            assert await conn.fetchval(enabled) is False
        await db.execute(debit, account, key())
        assert await db.fetchval(created, account) == 3
        await db.execute("SELECT balance_configure($1::text[], 50)",
                         [*ALERTS, "transaction.created"])
        assert await db.fetchval(enabled) is True
        await db.execute(debit, account, key())
        assert await db.fetchval(created, account) == 4
        assert await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1",
                              account) == []
    finally:
        await db.execute("SELECT balance_configure($1::text[], 50)", was)


async def test_a_debit_above_the_floor_calls_no_alert_or_event_function(
    db: asyncpg.Pool, account: str
) -> None:
    """The point of the floor and of the trigger that follows the subscription: an ordinary
    debit queues no trigger call and evaluates no function of ours in a WHEN."""
    debit = ("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'usage', -1, 'r', NULL, NULL,"
             " 'available')")
    calls = ("SELECT p.proname::text, pg_stat_get_xact_function_calls(p.oid) FROM pg_proc p"
             " WHERE p.proname IN ('balance__alert_state', 'balance__events',"
             " 'balance__transaction_created', 'balance__transaction_events')")
    async with server_session(db) as conn:  # alerts subscribed, not transaction.created
        await conn.execute("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'grant', 300, 'r',"
                           " NULL, NULL, 'available')", account, key())
    async with server_session(db) as conn:
        await conn.execute("SET LOCAL track_functions = 'pl'")
        await conn.execute(debit, account, key())
        assert {r[0]: r[1] for r in await conn.fetch(calls)} == dict.fromkeys(
            ["balance__alert_state", "balance__events", "balance__transaction_created",
             "balance__transaction_events"])
        await conn.execute("SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'usage', -260, 'r',"
                           " NULL, NULL, 'available')", account, key())  # 39: crosses 50
        assert {r[0]: r[1] for r in await conn.fetch(calls)}["balance__alert_state"] == 1
    assert await alert_types(db, account) == ["balance.low"]
