"""Real PostgreSQL and Redis for the whole run, and real uvicorn servers on loopback."""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from server import serve
from server.app import create_app
from server.config import Settings
from server.dev import servers as devservers
from server.schema import migrate

# The checkout stand-in's and the app webhook receiver's fixtures, for any test.
pytest_plugins = ["tests.payments.standin", "tests.receiver"]

PRICES = {"generate_image": 5, "upscale": 2, "generate_video": 40}
# Seconds; no test comes near it, so reaching it means a hang.
TEST_TIMEOUT = float(os.environ.get("BALANCE_TEST_TIMEOUT", "60"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every async test: a hang fails with every task's stack instead of stalling CI."""
    for item in items:
        function = getattr(item, "obj", None)
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(function):
            item.obj = _bounded(function)


def _bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        deadline = asyncio.timeout(TEST_TIMEOUT)
        try:
            async with deadline:
                await test(*args, **kwargs)
        except TimeoutError:
            if not deadline.expired():
                raise  # a timeout of the test's own: its failure, not a hang
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(file=stacks)
            pytest.fail(f"test hung for {TEST_TIMEOUT} s; tasks:\n{stacks.getvalue()}")

    return run


# Tests read and write our tables by their plain names; the server itself never relies on
# a session's search_path (a pooler's session is anyone's), only test connections do.
IN_SCHEMA = {"search_path": "balance, public"}


@pytest.fixture(scope="session")
def postgres() -> Iterator[devservers.PostgresServer]:
    with devservers.start_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis() -> Iterator[devservers.RedisServer]:
    with devservers.start_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[devservers.RedisCluster]:
    """A real Redis Cluster: three masters on loopback, no replicas."""
    with devservers.start_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """A test that takes it runs twice: on one Redis, and on the three-master cluster."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis").url)
    return str(request.getfixturevalue("redis_cluster").url)


@pytest.fixture(scope="session")
async def migrated(postgres: devservers.PostgresServer) -> str:
    conn = await asyncpg.connect(postgres.url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return postgres.url


@pytest.fixture(scope="session")
async def db(migrated: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool for tests that look at (or corrupt) rows directly.

    When the run ends, every account the whole suite touched must reconcile: balance ==
    sum(ledger), held == active holds, grants == what is owned."""
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=5,
                                     server_settings=IN_SCHEMA)
    assert pool is not None
    yield pool
    try:
        mismatched = await pool.fetch("SELECT * FROM balance_reconcile()")
        assert mismatched == [], f"reconcile after the suite: {mismatched}"
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def prices_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    path.write_text(json.dumps(PRICES))
    return path


@dataclass
class RunningApp:
    settings: Settings
    server: uvicorn.Server
    task: asyncio.Task[None]
    asgi: Starlette

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/v1/ws"

    @property
    def service_key(self) -> str:
        return self.settings.service_keys[0].secret

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client that sends the service key."""
        headers = {"Authorization": f"Bearer {self.service_key}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    async def stop(self) -> None:
        if not self.task.done():
            self.server.should_exit = True
            await self.task


StartApp = Callable[..., Awaitable[RunningApp]]


@pytest.fixture(scope="session")
async def start_app(
    migrated: str, redis: devservers.RedisServer, prices_file: Path
) -> AsyncIterator[StartApp]:
    """Factory: a real server on a free port; keyword arguments override Settings fields."""
    running: list[RunningApp] = []
    service_key = "sk_test_" + secrets.token_urlsafe(16)
    token_secret = secrets.token_urlsafe(48)
    channel_prefix = f"test-{uuid.uuid4().hex[:8]}"

    async def start(**overrides: Any) -> RunningApp:
        extra = overrides.pop("extra_routes", None)
        env = {
            "DATABASE_URL": migrated,
            "REDIS_URL": redis.url,
            "BALANCE_SERVICE_KEYS": service_key,
            "BALANCE_TOKEN_SECRET": token_secret,
            "BALANCE_PRICES_FILE": str(prices_file),
        }
        values: dict[str, Any] = {
            "port": devservers.free_port(),
            "channel_prefix": channel_prefix,
            "sweep_interval": 0.2,
            "drain_seconds": 0.2,
            "ws_auth_timeout": 1.0,
            **overrides,
        }
        settings = Settings.from_env(env, **values)
        asgi = create_app(settings, extra_routes=extra)
        server = serve.server(asgi, settings)  # what `balance-server serve` runs
        task = asyncio.create_task(server.serve())
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        app = RunningApp(settings, server, task, asgi)
        running.append(app)
        return app

    yield start
    for app in running:
        await app.stop()


@pytest.fixture(scope="session")
async def app(start_app: StartApp) -> RunningApp:
    """The shared default server (REDIS_URL set, prices loaded, no welcome credits)."""
    return await start_app()


@pytest.fixture
async def client(app: RunningApp) -> AsyncIterator[httpx.AsyncClient]:
    async with app.client() as c:
        yield c


@pytest.fixture
def account() -> str:
    """A fresh account id, so tests never see each other's data."""
    return f"acct-{uuid.uuid4().hex[:12]}"


def key() -> str:
    return f"idem-{uuid.uuid4().hex}"


async def scraped(app: RunningApp, name: str, **labels: str) -> float | None:
    """One sample of the app's GET /metrics (None: not exported)."""
    async with httpx.AsyncClient(base_url=app.base_url) as scraper:
        text = (await scraper.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


async def age_plan(
    conn: asyncpg.Pool | asyncpg.pool.PoolConnectionProxy, account: str, days: int
) -> None:
    """The account's plan as if it had been assigned `days` earlier and nobody had renewed
    it since: its anchor, period, allowance lots, plan_periods and limits' usage all moved
    back (one statement, so the running jobs see it whole or not at all)."""
    await conn.execute(f"""
        WITH a AS (UPDATE accounts SET plan_anchor = plan_anchor - interval '{days:d} days',
                       period_start = period_start - interval '{days:d} days',
                       period_end = period_end - interval '{days:d} days'
                   WHERE account_id = $1 RETURNING account_id),
             l AS (UPDATE credit_lots SET expires_at = expires_at - interval '{days:d} days'
                   WHERE account_id = $1 AND kind = 'allowance' RETURNING id),
             u AS (UPDATE plan_usage SET period_start = period_start - interval '{days:d} days'
                   WHERE account_id = $1 RETURNING 1)
        UPDATE plan_periods SET period_start = period_start - interval '{days:d} days',
            period_end = period_end - interval '{days:d} days' WHERE account_id = $1""",
        account)
