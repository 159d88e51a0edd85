"""Inputs built to break the server get a clear 4xx (or an error frame), never a 5xx."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import create_app
from server.auth import mint_token
from tests.conftest import RunningApp, StartApp, key

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
    """Up to 3.12 the decoder refuses the depth (invalid_message); 3.13's deeper C
    recursion limit lets it skip the unknown field, and the token is refused. Either way:
    error frames, then 4401, never a crash."""
    async with connect(app.ws_url) as ws:
        await ws.send('{"type": "auth", "token": "x", "extra": ' + DEEP + "}")
        codes = []
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    frame = json.loads(await ws.recv())
                    codes.append((frame["type"], frame["code"]))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert codes in ([("error", "invalid_message"), ("error", "unauthorized")],
                         [("error", "unauthorized")]), codes


async def test_metrics_can_require_a_token(start_app: StartApp) -> None:
    app = await start_app(metrics_token="metrics-" + "m" * 24)
    async with httpx.AsyncClient(base_url=app.base_url) as scraper:
        assert (await scraper.get("/metrics")).status_code == 401
        r = await scraper.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await scraper.get("/metrics",
                              headers={"Authorization": f"Bearer metrics-{'m' * 24}"})
        assert r.status_code == 200 and "balance_http_requests_total" in r.text
    await app.stop()


def test_open_origins_are_said_at_start(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="balance.app"):
        create_app(app.settings)
    assert "BALANCE_ALLOWED_ORIGINS is empty" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="balance.app"):
        create_app(dataclasses.replace(app.settings, allowed_origins=("https://app.example",)))
    assert "BALANCE_ALLOWED_ORIGINS" not in caplog.text


async def test_no_token_reaches_a_log_line(
    app: RunningApp, account: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = mint_token(app.settings.token_secret, account, 600)[0]
    with caplog.at_level(logging.DEBUG, logger="balance.ws.wire"):
        async with connect(f"{app.ws_url}?token={token}") as ws:
            await ws.recv()
    assert "/v1/ws?token=[redacted]" in caplog.text  # websockets' request line, at DEBUG
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


async def test_a_usage_range_ending_in_year_one_is_not_a_500(
    client: httpx.AsyncClient, account: str
) -> None:
    """Found by schemathesis: `until` early in year 1 made `until - 366 days` overflow."""
    r = await client.get(f"/v1/accounts/{account}/usage",
                         params={"until": "0001-08-06T09:44:44.77Z"})
    assert r.status_code == 200, r.text
    assert r.json() == {"groups": []}


async def test_a_client_that_leaves_mid_body_is_no_error(
    app: RunningApp, account: str, caplog: pytest.LogCaptureFixture
) -> None:
    def count(status: str) -> float:
        return REGISTRY.get_sample_value("balance_http_requests_total", {
            "method": "POST", "route": "/v1/accounts/{account_id}/debit", "status": status,
        }) or 0.0

    before = count("500"), count("499")
    _reader, writer = await asyncio.open_connection("127.0.0.1", app.settings.port)
    writer.write(
        f"POST /v1/accounts/{account}/debit HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {app.service_key}\r\nContent-Type: application/json\r\n"
        'Content-Length: 200\r\n\r\n{"amount": 1, '.encode())
    await writer.drain()
    await asyncio.sleep(0.2)  # the route is waiting for the rest of the body
    writer.transport.abort()
    async with asyncio.timeout(5):
        while count("499") == before[1]:  # noqa: ASYNC110 - a counter has no event
            await asyncio.sleep(0.02)
    assert count("500") == before[0]
    assert "Exception in ASGI application" not in caplog.text
    assert "Traceback" not in caplog.text
