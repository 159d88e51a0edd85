"""GET /v1/ws end to end: real uvicorn servers sharing real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.app import create_app
from server.auth import mint_token
from server.dev import servers as devservers
from server.ledger import Ledger
from server.messages import BalanceFrame, ChangeInfo, encoder
from server.push.hub import Hub
from server.push.publisher import account_channel
from server.push.ws import MAX_INVALID, Connection
from tests.conftest import RunningApp, StartApp, key
from tests.gate import Gate

Json = dict[str, Any]


def token(app: RunningApp, account: str, ttl: int = 3600) -> str:
    return mint_token(app.settings.token_secret, account, ttl)[0]


def hub_of(app: RunningApp) -> Hub:
    """The hub inside a server running in this process."""
    asgi: Any = app.server.config.app
    hub: Hub = asgi.state.resources.hub
    return hub


async def open_socket(
    app: RunningApp, account: str, **kwargs: Any
) -> tuple[ClientConnection, Json]:
    """An authenticated socket and its snapshot frame."""
    ws = await connect(app.ws_url, **kwargs)
    await ws.send(json.dumps({"type": "auth", "token": token(app, account)}))
    return ws, await recv(ws)


async def recv(ws: ClientConnection, within: float = 5.0) -> Json:
    async with asyncio.timeout(within):
        frame: Json = json.loads(await ws.recv())
        return frame


async def silent(ws: ClientConnection, within: float = 0.3) -> bool:
    """True when nothing arrives on the socket for `within` seconds."""
    try:
        async with asyncio.timeout(within):
            await ws.recv()
    except TimeoutError:
        return True
    return False


async def close_code(ws: ClientConnection, within: float = 5.0) -> int | None:
    """Read until the server closes the socket; its close code."""
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def until_version(ws: ClientConnection, version: int, within: float = 5.0) -> list[Json]:
    """Every frame up to and including `version`."""
    frames: list[Json] = []
    async with asyncio.timeout(within):
        while not frames or frames[-1]["version"] < version:
            frames.append(await recv(ws, within))
    return frames


async def move(client: httpx.AsyncClient, account: str, amount: int) -> Json:
    """A credit (amount > 0) or a debit (amount < 0) through the backend API."""
    if amount > 0:
        body = {"amount": amount, "kind": "grant", "idempotency_key": key()}
        r = await client.post(f"/v1/accounts/{account}/credit", json=body)
    else:
        body = {"amount": -amount, "reason": "test", "idempotency_key": key()}
        r = await client.post(f"/v1/accounts/{account}/debit", json=body)
    assert r.status_code == 200, r.text
    result: Json = r.json()["account"]
    return result


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


@pytest.fixture
def own_redis() -> Iterator[devservers.RedisServer]:
    with devservers.start_redis() as server:
        yield server


async def test_a_debit_reaches_every_socket_of_the_account_on_every_instance(
    start_app: StartApp, redis_url: str, account: str
) -> None:
    other = f"{account}-other"
    app = await start_app(redis_url=redis_url)
    b = await start_app(redis_url=redis_url)
    try:
        async with app.client() as client:
            await move(client, account, 100)
            a1, snap = await open_socket(app, account)
            # The grant's own frame may still be on its way through the broker when the socket
            # subscribes: then it comes first (the same version, with its change) instead.
            change = snap.pop("change")
            assert change is None or change["kind"] == "grant"
            assert snap == {
                "type": "balance", "account_id": account, "balance": 100, "held": 0,
                "available": 100, "version": 1, "low": False,
            }  # fmt: skip
            a2, _ = await open_socket(app, account)
            b1, _ = await open_socket(b, account)
            onlooker, _ = await open_socket(b, other)
            after = await move(client, account, -30)
            for ws in (a1, a2, b1):
                frame = await recv(ws, 2.0)
                assert frame["version"] == after["version"] == 2
                assert (frame["balance"], frame["available"]) == (70, 70)
                assert frame["change"]["kind"] == "usage" and frame["change"]["amount"] == -30
            assert await silent(onlooker)
            for ws in (a1, a2, b1, onlooker):
                await ws.close()
    finally:
        await app.stop()
        await b.stop()


async def test_token_in_the_query_string(app: RunningApp, account: str) -> None:
    async with connect(f"{app.ws_url}?token={token(app, account)}") as ws:
        snap = await recv(ws)
        assert snap["type"] == "balance" and snap["account_id"] == account


async def test_bad_token_gets_an_error_then_4401(app: RunningApp) -> None:
    async with connect(app.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "not-a-token"}))
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == "unauthorized"
        assert await close_code(ws) == 4401
    async with connect(f"{app.ws_url}?token=forged.token.here") as ws:
        assert (await recv(ws))["code"] == "unauthorized"
        assert await close_code(ws) == 4401


async def test_no_auth_in_time_is_closed_4408(start_app: StartApp) -> None:
    app = await start_app(ws_auth_timeout=0.3)
    try:
        async with connect(app.ws_url) as ws:
            started = time.monotonic()
            assert await close_code(ws) == 4408
            assert 0.25 < time.monotonic() - started < 2.0
    finally:
        await app.stop()


async def test_sync_answers_stale_versions_only(app: RunningApp, account: str) -> None:
    async with app.client() as client:
        await move(client, account, 50)
        ws, snap = await open_socket(app, account)
        assert snap["version"] == 1
        await ws.send(json.dumps({"type": "sync", "versions": {account: 1}}))
        assert await silent(ws)
        await ws.send(json.dumps({"type": "sync", "versions": {account: 0}}))
        healed = await recv(ws)
        assert (healed["version"], healed["balance"], healed["change"]) == (1, 50, None)
        await ws.send(json.dumps({"type": "sync", "versions": {}}))
        assert (await recv(ws))["version"] == 1
        await ws.close()


async def test_a_lost_publish_is_healed_by_sync(
    app: RunningApp, account: str, db: asyncpg.Pool
) -> None:
    async with app.client() as client:
        await move(client, account, 10)
        ws, snap = await open_socket(app, account)
        # Committed straight through the ledger, never published (as if the publish was lost):
        await Ledger(db, 0).post(
            account, kind="grant", amount=5, reason="lost", idempotency_key=key(),
            fingerprint=uuid.uuid4().bytes,
        )  # fmt: skip
        assert await silent(ws)
        await ws.send(json.dumps({"type": "sync", "versions": {account: snap["version"]}}))
        healed = await recv(ws)
        assert (healed["version"], healed["balance"]) == (2, 15)
        await ws.close()


async def test_concurrent_debits_arrive_in_version_order(
    start_app: StartApp, redis_url: str, account: str
) -> None:
    app = await start_app(redis_url=redis_url)
    b = await start_app(redis_url=redis_url)
    try:
        async with app.client() as ca, b.client() as cb:
            await move(ca, account, 1000)
            sockets = [(await open_socket(x, account))[0] for x in (app, app, b, b)]
            results = await asyncio.gather(
                *(move(ca if i % 2 else cb, account, -7) for i in range(60))
            )
            final = max(r["version"] for r in results)
            assert final == 61
            truth = (await ca.get(f"/v1/accounts/{account}")).json()
            assert truth["balance"] == 1000 - 60 * 7
            for ws in sockets:
                frames = await until_version(ws, final)
                versions = [f["version"] for f in frames]
                assert versions == sorted(set(versions)), "never older after newer, no repeats"
                assert frames[-1]["balance"] == truth["balance"]
                await ws.close()
    finally:
        await app.stop()
        await b.stop()


@contextlib.asynccontextmanager
async def debiting(
    pairs: list[tuple[httpx.AsyncClient, str]], reason: str
) -> AsyncIterator[list[int]]:
    """Debits of 1 on each (client, account), over and over until the block ends; yields
    their HTTP statuses."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def debit_forever(client: httpx.AsyncClient, acct: str) -> None:
        while not stop.is_set():
            body = {"amount": 1, "reason": reason, "idempotency_key": key()}
            r = await client.post(f"/v1/accounts/{acct}/debit", json=body)
            statuses.append(r.status_code)
            await asyncio.sleep(0.005)

    workers = [asyncio.create_task(debit_forever(c, acct)) for c, acct in pairs]
    try:
        yield statuses
    finally:
        stop.set()
        await asyncio.gather(*workers)


async def at_truth(
    client: httpx.AsyncClient, sockets: list[tuple[ClientConnection, str]], within: float
) -> None:
    """Every socket reaches its account's committed version and balance within `within`
    seconds of this call."""
    back = time.monotonic()
    for ws, acct in sockets:
        truth = (await client.get(f"/v1/accounts/{acct}")).json()
        frames = await until_version(ws, truth["version"], within=within)
        assert frames[-1]["balance"] == truth["balance"]
    assert time.monotonic() - back < within


async def test_redis_outage_loses_no_debit_and_heals_every_socket(
    start_app: StartApp, own_redis: devservers.RedisServer, account: str
) -> None:
    a = await start_app(redis_url=own_redis.url)
    b = await start_app(redis_url=own_redis.url)
    accounts = [f"{account}-{i}" for i in range(3)]
    try:
        async with a.client() as ca, b.client() as cb:
            for acct in accounts:
                await move(ca, acct, 10_000)
            sockets = [((await open_socket(x, acct))[0], acct) for x in (a, b) for acct in accounts]
            pairs = [(c, acct) for c in (ca, cb) for acct in accounts]
            async with debiting(pairs, "outage") as statuses:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(own_redis.stop)
                await asyncio.sleep(1.5)  # debits go on while Redis is away
            await asyncio.to_thread(own_redis.start)

            assert statuses and set(statuses) == {200}, "every debit committed"
            await at_truth(ca, sockets, within=2.0)
            for ws, _ in sockets:
                await ws.close()
    finally:
        await a.stop()
        await b.stop()


async def test_a_cluster_master_killed_and_restarted_heals_every_socket(
    start_app: StartApp, account: str
) -> None:
    """One of three masters is SIGKILLed while debits go on, on two instances. The other
    masters' accounts keep their live frames across instances; once the master is back,
    every socket is at the true balance within 2 s."""
    with devservers.start_redis_cluster() as cluster:
        a = await start_app(redis_url=cluster.url)
        b = await start_app(redis_url=cluster.url)
        prefix = a.settings.channel_prefix
        accounts = [f"{account}-{i}" for i in range(12)]
        homes = {acct: cluster.master_of(account_channel(prefix, acct)) for acct in accounts}
        victim = homes[accounts[0]]
        survivor = next(acct for acct in accounts if homes[acct] is not victim)
        try:
            async with a.client() as ca, b.client() as cb:
                for acct in accounts:
                    await move(ca, acct, 10_000)
                on_b, _ = await open_socket(b, survivor)
                sockets = [
                    ((await open_socket(x, acct))[0], acct) for x in (a, b) for acct in accounts
                ]
                # The survivor is debited only below, on A: a frame of it on `on_b` came
                # through the cluster.
                pairs = [(c, acct) for c in (ca, cb) for acct in accounts if acct != survivor]
                async with debiting(pairs, "failover") as statuses:
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(victim.stop, signal.SIGKILL)
                    await eventually(lambda: not hub_of(a).broker.connected)
                    # A surviving master's account, debited on A, is pushed live to B.
                    during = await move(ca, survivor, -1)
                    await until_version(on_b, during["version"], within=2.0)
                    await asyncio.sleep(1.0)  # debits go on while the master is away
                await asyncio.to_thread(victim.start)

                assert statuses and set(statuses) == {200}, "every debit committed"
                await at_truth(ca, sockets, within=2.0)
                for ws, _ in [*sockets, (on_b, survivor)]:
                    await ws.close()
        finally:
            await a.stop()
            await b.stop()


async def test_a_change_made_between_two_instances_reconnects_reaches_both(
    start_app: StartApp, own_redis: devservers.RedisServer, account: str
) -> None:
    """Redis killed and restarted; instance B gets back a while after A; a debit on B in
    that gap reaches A's sockets once B is back, with no client sync."""
    async with Gate(own_redis.port) as gate:
        a = await start_app(redis_url=own_redis.url)
        b = await start_app(redis_url=gate.url)  # B reaches Redis only through the gate
        try:
            async with a.client() as ca, b.client() as cb:
                await move(ca, account, 100)
                sockets = [(await open_socket(x, account))[0] for x in (a, a, b, b)]
                gate.shut()
                await asyncio.to_thread(own_redis.stop, signal.SIGKILL)
                await eventually(lambda: not hub_of(a).broker.connected)
                await eventually(lambda: not hub_of(b).broker.connected)
                await asyncio.to_thread(own_redis.start)
                await eventually(lambda: hub_of(a).broker.connected)
                await asyncio.sleep(0.3)  # A's own resync is over: it read PostgreSQL before

                after = await move(cb, account, -7)  # committed on B, which cannot publish
                assert not hub_of(b).broker.connected, "the debit must land in the gap"
                gate.open()
                back = time.monotonic()
                for ws in sockets:
                    frames = await until_version(ws, after["version"], within=2.0)
                    assert frames[-1]["balance"] == 93
                assert time.monotonic() - back < 2.0
                for ws in sockets:
                    await ws.close()
        finally:
            await a.stop()
            await b.stop()


async def test_a_stalled_reader_is_conflated_then_closed_4509(
    start_app: StartApp, account: str
) -> None:
    app = await start_app(ws_send_timeout=1.0)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", app.settings.port))
        # max_queue=1: the client stops reading its socket as soon as one frame waits.
        ws = await connect(app.ws_url, sock=sock, max_queue=1, max_size=None)
        await ws.send(json.dumps({"type": "auth", "token": token(app, account)}))
        await recv(ws)
        hub = hub_of(app)
        (conn,) = hub._accounts[account].listeners
        assert isinstance(conn, Connection)
        conflated = REGISTRY.get_sample_value("balance_ws_frames_conflated_total") or 0.0

        reason = "x" * 2000
        for version in range(1000, 6000):  # ~10 MB of frames for one socket
            change = ChangeInfo("usage", -1, reason, version, None)
            hub.deliver(account, version, encoder.encode(
                BalanceFrame(account, 0, 0, 0, version, change=change)))
            if version % 100 == 0:
                await asyncio.sleep(0)
                # Bounded: one pending frame per account, and the transport's high-water mark.
                assert conn.pending() <= 1
                assert conn.buffered() < 64 * 1024 + 4096
        assert (REGISTRY.get_sample_value("balance_ws_frames_conflated_total") or 0) > conflated

        await eventually(lambda: not conn.open, within=3.0)  # stalled past ws_send_timeout
        versions: list[int] = []
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    versions.append(json.loads(await ws.recv())["version"])
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4509
        assert versions == sorted(set(versions))  # conflated: never older after newer
        await eventually(lambda: account not in hub._accounts)
    finally:
        await app.stop()


async def test_token_refresh_and_expiry(app: RunningApp, account: str) -> None:
    short = mint_token(app.settings.token_secret, account, 2)[0]
    refreshed = await connect(f"{app.ws_url}?token={short}")
    expiring = await connect(f"{app.ws_url}?token={short}")
    await recv(refreshed)
    await recv(expiring)
    await refreshed.send(json.dumps({"type": "auth", "token": token(app, account, 60)}))
    assert await close_code(expiring, within=4.0) == 4401
    async with app.client() as client:
        after = await move(client, account, 3)
    assert (await recv(refreshed))["version"] == after["version"]  # still open and fed

    # A refresh must keep the account.
    await refreshed.send(json.dumps({"type": "auth", "token": token(app, account + "x")}))
    assert (await recv(refreshed))["code"] == "unauthorized"
    assert await close_code(refreshed) == 4401


async def test_other_origins_are_refused_at_the_handshake(
    start_app: StartApp, account: str
) -> None:
    app = await start_app(allowed_origins=("https://app.example",))
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(app.ws_url, origin="https://evil.example")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            await connect(app.ws_url)  # no Origin at all
        ws, snap = await open_socket(app, account, origin="https://app.example")
        assert snap["account_id"] == account
        await ws.close()
    finally:
        await app.stop()


async def test_malformed_frames_get_an_error_and_oversized_ones_close(
    app: RunningApp, account: str
) -> None:
    ws, _ = await open_socket(app, account)
    for bad in ("not json", '{"type": "nope"}', '{"type": "sync", "versions": 3}', "[]"):
        await ws.send(bad)
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_message")
    await ws.send(json.dumps({"type": "sync", "versions": {}}))
    assert (await recv(ws))["type"] == "balance"  # still serving
    await ws.send("x" * 5000)
    assert (await recv(ws))["code"] == "frame_too_large"
    assert await close_code(ws) == 4400


async def test_frames_that_are_no_message_past_a_small_budget_close_4400(
    app: RunningApp, account: str
) -> None:
    """Each earns an error frame some 14 times its size; the JS client sends none."""
    ws, _ = await open_socket(app, account)
    for _ in range(MAX_INVALID):
        await ws.send("not json")
        assert (await recv(ws))["code"] == "invalid_message"
    await ws.send(json.dumps({"type": "sync", "versions": {}}))
    assert (await recv(ws))["type"] == "balance"  # still served
    await ws.send("[]")
    last = await recv(ws)
    assert last["code"] == "invalid_message" and f"more than {MAX_INVALID}" in last["message"]
    assert await close_code(ws) == 4400


async def test_sockets_per_account_are_bounded(start_app: StartApp, account: str) -> None:
    app = await start_app(ws_max_sockets_per_account=2)
    try:
        first, _ = await open_socket(app, account)
        second, _ = await open_socket(app, account)
        async with connect(f"{app.ws_url}?token={token(app, account)}") as third:
            assert await close_code(third) == 4429
        other, _ = await open_socket(app, f"{account}-2")
        for ws in (first, second, other):
            await ws.close()
    finally:
        await app.stop()


async def test_shutdown_closes_sockets_with_service_restart(
    start_app: StartApp, account: str
) -> None:
    app = await start_app()
    sockets = [(await open_socket(app, f"{account}-{i}"))[0] for i in range(5)]
    stopping = asyncio.create_task(app.stop())
    codes = await asyncio.gather(*(close_code(ws) for ws in sockets))
    await stopping
    assert set(codes) == {1012}


async def test_a_socket_that_does_not_answer_pings_is_dropped(
    start_app: StartApp, account: str
) -> None:
    app = await start_app(ws_ping_interval=0.2)
    try:
        # A raw client that completes the handshake, then never answers anything.
        reader, writer = await asyncio.open_connection("127.0.0.1", app.settings.port)
        writer.write(
            f"GET /v1/ws?token={token(app, account)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        hub = hub_of(app)
        await eventually(lambda: account in hub._accounts, within=2.0)
        started = time.monotonic()
        async with asyncio.timeout(3):
            while await reader.read(65536):  # snapshot, pings, then EOF when dropped
                pass
        assert time.monotonic() - started < 1.5
        await eventually(lambda: account not in hub._accounts, within=2.0)
        writer.close()
        await writer.wait_closed()
    finally:
        await app.stop()


async def test_a_server_not_configured_by_serve_refuses_sockets_loudly(
    app: RunningApp, account: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only serve.py's configuration gives /v1/ws its frame writer; any other is refused
    with 4500 and an error naming the cause, never served half-working."""
    settings = dataclasses.replace(app.settings, port=devservers.free_port())
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning",
        ws="websockets-sansio"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started)
        url = f"ws://127.0.0.1:{settings.port}/v1/ws?token={token(app, account)}"
        async with connect(url) as ws:
            assert await close_code(ws) == 4500
        assert "serve.py" in caplog.text
        async with httpx.AsyncClient() as plain:  # HTTP is served all the same
            r = await plain.get(f"http://127.0.0.1:{settings.port}/healthz")
            assert r.status_code == 200
    finally:
        server.should_exit = True
        await task
