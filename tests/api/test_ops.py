"""The operators' routes that anyone may call cost a bounded amount, however often called."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from server.api import openapi
from server.api.ops import Readiness
from tests.conftest import StartApp


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
                if (await anyone.get("/readyz")).status_code == 200:
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
                b'{"ready":true,"checks":{"database":true,"broker":true}}'}
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
