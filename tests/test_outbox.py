"""App webhooks against a real local HTTP receiver (not a stand-in for our dispatcher):
signed per Standard Webhooks, retried with the same webhook-id, never lost when an instance
is killed mid-delivery, never delivered twice by two instances; low-balance crossings
decided once under any concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from server.auth import mint_token
from server.dev.servers import free_port
from tests.conftest import RunningApp, StartApp, key
from tests.receiver import SECRET, Receiver

REPO = Path(__file__).resolve().parent.parent
CATALOG = {"prices": {"generate_image": 5}, "alerts": {"low_balance": 50}}


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
        # An account's own threshold wins over the catalog's, and is pushed.
        async with app.client() as c:
            r = await c.put(f"/v1/accounts/{account}/alerts", json={"low_balance": 80})
        assert r.status_code == 200 and r.json()["account"]["low"] is True
        await wait_for(lambda: len(receiver.of(account)) >= 4)
        last = max(receiver.of(account), key=lambda r: r.data["version"])
        assert (last.type, last.data["threshold"]) == ("balance.low", 80)
    finally:
        await app.stop()


async def test_a_failing_receiver_gets_every_attempt_with_one_webhook_id(
    start_hooked: StartHooked, receiver: Receiver, db: asyncpg.Pool, account: str
) -> None:
    receiver.answers = [500, 500, 500]  # then 200
    app = await start_hooked()
    try:
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 10, "kind": "grant"})
        await wait_for(lambda: len(receiver.of(account)) >= 4)
        got = receiver.of(account)
        assert len(got) == 4 and len({g.webhook_id for g in got}) == 1
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
        await post(app, f"/v1/accounts/{account}/credit", {"amount": 10, "kind": "grant"})
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
        # Each account: a credit below the threshold, so one balance.low each.
        await asyncio.gather(*(post((one, two)[i % 2], f"/v1/accounts/{a}/credit",
                                    {"amount": 10, "kind": "grant"})
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
            r = await c.post(f"/v1/accounts/{account}/credit",
                             json={"amount": 10, "kind": "grant", "idempotency_key": key()})
            assert r.status_code == 200
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


async def test_without_a_subscription_nothing_is_written(
    start_app: StartApp, db: asyncpg.Pool, account: str, catalog_file: str
) -> None:
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
