"""The operators' routes, and what every request gets: an id, and a JSON 500 with one log
line when nothing else answered it. What anyone may call costs a bounded amount."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.client import connect

import server
from server import logs, metrics
from server.api import openapi
from server.api.http import account_param
from server.api.ops import Readiness
from server.dev.servers import free_port
from server.logs import Scrubber
from server.metrics import DatabaseGauges
from tests.conftest import RunningApp, StartApp, scraped


async def test_a_flood_of_readyz_costs_one_database_check_a_second(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_app()
    pool = app.asgi.state.resources.pool
    loop = asyncio.get_running_loop()
    probes = in_flight = most_in_flight = 0
    fetchval = asyncpg.Pool.fetchval

    async def counted(self: asyncpg.Pool, query: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal probes, in_flight, most_in_flight
        if self is not pool or query != "SELECT 1":
            return await fetchval(self, query, *args, **kwargs)
        probes += 1
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await asyncio.sleep(0.2)  # a slow database: the flood arrives while it answers
            return await fetchval(self, query, *args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(asyncpg.Pool, "fetchval", counted)
    try:
        async with httpx.AsyncClient(base_url=app.base_url, timeout=30,
                                     limits=httpx.Limits(max_connections=200)) as anyone:
            for _ in range(50):  # the broker's canary has come back once
                if (await anyone.get("/readyz")).json()["broker"] == "ok":
                    break
                await asyncio.sleep(Readiness.FRESH)
            await asyncio.sleep(Readiness.FRESH)
            probes = most_in_flight = 0
            started = loop.time()
            answers = await asyncio.gather(*(anyone.get("/readyz") for _ in range(200)))
            took = loop.time() - started
            with capsys.disabled():
                print(f"\n200 concurrent /readyz in {took:.2f} s: {probes} database probes, "
                      f"at most {most_in_flight} in flight")
            assert {r.status_code for r in answers} == {200}
            assert {r.content for r in answers} == {
                b'{"ready":true,"database":"ok","broker":"ok"}'}
            # (200 connections on this loop, shared with the server, may take over a second)
            assert most_in_flight == 1 and probes <= 1 + took / Readiness.FRESH, (probes, took)
            await asyncio.sleep(Readiness.FRESH)
            probes = 0
            assert (await anyone.get("/readyz")).status_code == 200
            assert probes == 1, "probed again once the answer is a second old"
    finally:
        await app.stop()


async def test_openapi_is_built_once_and_served_as_the_same_bytes(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = 0
    build = openapi.build

    def counted(*args: Any) -> dict[str, Any]:
        nonlocal built
        built += 1
        return build(*args)

    monkeypatch.setattr(openapi, "build", counted)
    app = await start_app()
    try:
        async with httpx.AsyncClient(base_url=app.base_url) as anyone:
            answers = await asyncio.gather(*(anyone.get("/openapi.json") for _ in range(50)))
        assert {r.status_code for r in answers} == {200}
        assert len({r.content for r in answers}) == 1
        assert answers[0].json()["openapi"].startswith("3.")
        assert built == 1
    finally:
        await app.stop()


HEX16 = re.compile(r"[0-9a-f]{16}")


async def test_every_answer_carries_a_request_id(app: RunningApp, account: str) -> None:
    async with app.client() as c:
        made = [await c.get("/healthz"), await c.get("/healthz")]
        refused = await c.get(f"/v1/accounts/{account}",
                              headers={"Authorization": "Bearer not-a-key"})
        missing = await c.get("/v1/nope")
        kept = await c.get("/healthz", headers={"X-Request-Id": "lb-7f3a:42"})
        too_long = await c.get("/healthz", headers={"X-Request-Id": "x" * 129})
        unprintable = await c.get("/healthz", headers={b"X-Request-Id": "ü".encode("latin-1")})
    for r in (*made, refused, missing, too_long, unprintable):
        assert HEX16.fullmatch(r.headers["x-request-id"]), r.headers
    assert made[0].headers["x-request-id"] != made[1].headers["x-request-id"]
    assert (refused.status_code, missing.status_code) == (401, 404)
    assert kept.headers["x-request-id"] == "lb-7f3a:42"
    assert len(kept.headers.get_list("x-request-id")) == 1


async def test_a_socket_upgrade_carries_its_request_id(app: RunningApp) -> None:
    async with connect(app.ws_url) as ws:
        assert ws.response is not None
        assert HEX16.fullmatch(ws.response.headers["X-Request-Id"])
    async with connect(app.ws_url, additional_headers={"X-Request-Id": "mine-1"}) as ws:
        assert ws.response is not None and ws.response.headers["X-Request-Id"] == "mine-1"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Our loggers' lines as `serve` writes them with BALANCE_LOG_FORMAT=json."""
    out = io.StringIO()
    handler = logs.handler("json", Scrubber(), out)
    ours = logging.getLogger("balance")
    ours.addHandler(handler)
    try:
        yield out
    finally:
        ours.removeHandler(handler)


async def test_an_unexpected_failure_is_a_json_500_and_one_line_with_its_traceback(
    start_app: StartApp, account: str, json_log: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(request: Request) -> Response:
        account_param(request)
        raise RuntimeError("the route broke")

    app = await start_app(extra_routes=[Route("/test/boom/{account_id}", boom)])
    try:
        async with app.client() as c:
            r = await c.get(f"/test/boom/{account}", params={"token": "secret-in-query"},
                            headers={"X-Request-Id": "req-500"})
    finally:
        await app.stop()
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-500"
    assert r.json() == {"error": "internal_error", "message": "unexpected server error; retry",
                        "request_id": "req-500"}
    failures = [line for line in map(json.loads, json_log.getvalue().splitlines())
                if line["level"] == "error"]
    assert len(failures) == 1, failures
    (line,) = failures
    assert (line["logger"], line["request_id"], line["account"]) == (
        "balance.api", "req-500", account)
    assert line["msg"] == f"unhandled error answering GET /test/boom/{account}"
    assert "Traceback" in line["exc"] and "RuntimeError: the route broke" in line["exc"]
    assert "secret-in-query" not in json_log.getvalue()
    assert app.service_key not in json_log.getvalue()
    # Nobody else logged it again (uvicorn's "Exception in ASGI application").
    assert [rec for rec in caplog.records if rec.levelno >= logging.ERROR
            and not rec.name.startswith("balance")] == []


async def test_readyz_follows_the_database_and_only_reports_the_broker(
    start_app: StartApp
) -> None:
    app = await start_app(redis_url=f"redis://127.0.0.1:{free_port()}")  # nothing listens
    try:
        async with httpx.AsyncClient(base_url=app.base_url) as anyone:
            ready = await anyone.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "database": "ok", "broker": "down"}
        assert await scraped(app, "balance_broker_up") == 0
    finally:
        await app.stop()
    app = await start_app()
    try:
        for _ in range(50):  # the canary's first round trip
            if await scraped(app, "balance_broker_up") == 1:
                break
            await asyncio.sleep(0.1)
        assert await scraped(app, "balance_broker_up") == 1
    finally:
        await app.stop()


async def test_metrics_of_the_build_the_pool_and_what_waits_in_the_database(
    app: RunningApp, db: asyncpg.Pool, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await scraped(app, "balance_build_info", version=server.__version__) == 1
    assert await scraped(app, "balance_db_pool_max_size") == app.settings.db_pool_size
    size = await scraped(app, "balance_db_pool_size")
    in_use = await scraped(app, "balance_db_pool_in_use")
    assert size is not None and in_use is not None and 0 <= in_use <= size >= 1
    monkeypatch.setattr(DatabaseGauges, "FRESH", 0.0)

    async def waiting() -> tuple[float | None, ...]:
        return (await scraped(app, "balance_outbox_events", status="pending"),
                await scraped(app, "balance_outbox_events", status="failed"),
                await scraped(app, "balance_payments_needing_review"))

    before = await waiting()
    assert None not in before
    event_id = f"evt_test_{account}"
    await db.execute("INSERT INTO events (type, account_id, data, status) VALUES"
                     " ('balance.low', $1, '{}', 'failed')", account)
    await db.execute("INSERT INTO webhook_events_unfulfilled (provider, event_id, event_type,"
                     " problem, payload) VALUES ('stripe', $1, 'test', 'test', '{}')", event_id)
    try:
        after = await waiting()
    finally:
        await db.execute("DELETE FROM events WHERE account_id = $1", account)
        await db.execute("DELETE FROM webhook_events_unfulfilled WHERE event_id = $1", event_id)
    assert after == (before[0], before[1] + 1, before[2] + 1)  # type: ignore[operator]


async def test_scrapes_count_in_the_database_at_most_every_five_seconds(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = 0
    fetchrow = asyncpg.Pool.fetchrow

    async def counting(self: asyncpg.Pool, query: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal counted
        counted += query == DatabaseGauges.SQL
        return await fetchrow(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Pool, "fetchrow", counting)
    monkeypatch.setattr(metrics.database, "_at", -math.inf)  # whatever earlier tests scraped
    for _ in range(20):
        assert await scraped(app, "balance_outbox_events", status="pending") is not None
    assert counted == 1
