"""Inputs built to break the server get a clear 4xx (or an error frame), never a 5xx."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningApp, key

DEEP = "[" * 1500 + "]" * 1500


async def test_deep_json_is_422_and_writes_nothing(
    client: httpx.AsyncClient, account: str, db: asyncpg.Pool
) -> None:
    for metadata in (DEEP, "[" * 40 + "]" * 40):
        body = ('{"amount": 1, "reason": "x", "idempotency_key": "' + key()
                + '", "metadata": {"a": ' + metadata + "}}")
        r = await client.post(f"/v1/accounts/{account}/debit", content=body)
        assert r.status_code == 422 and "nested" in r.json()["detail"], r.text
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE account_id = $1", account) == 0


async def test_a_nul_is_422_and_never_fails_someone_elses_batch(
    client: httpx.AsyncClient, account: str, db: asyncpg.Pool
) -> None:
    r = await client.post(f"/v1/accounts/{account}/credit",
                          json={"amount": 100, "kind": "grant", "idempotency_key": key()})
    assert r.status_code == 200

    async def debit(reason: str, metadata: dict[str, str] | None = None) -> int:
        response = await client.post(f"/v1/accounts/{account}/debit", json={
            "amount": 1, "reason": reason, "idempotency_key": key(), "metadata": metadata})
        return response.status_code

    codes = await asyncio.gather(*(debit(f"ok {i}") for i in range(20)),
                                 debit("bad\x00reason"), debit("ok", {"k": "v\x00"}))
    assert codes == [200] * 20 + [422, 422]
    assert (await client.get(f"/v1/accounts/{account}")).json()["balance"] == 80


async def test_a_deep_first_frame_gets_an_error_frame_not_a_crash(app: RunningApp) -> None:
    async with connect(app.ws_url) as ws:
        await ws.send('{"type": "auth", "token": "x", "extra": ' + DEEP + "}")
        error = json.loads(await ws.recv())
        assert (error["type"], error["code"]) == ("error", "invalid_message")
        try:
            await ws.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4401
