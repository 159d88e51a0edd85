"""Through a real PgBouncer in transaction mode (Debian's package, as Supabase's and Neon's
pooled URLs are): money, alerts and app webhooks, with nothing lost.

The server used to send `balance.events` and `balance.low_balance` as startup parameters,
which PgBouncer refuses; and asyncpg's prepared statements do not survive a pooler that
hands each transaction to another server session."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server.dev import servers as devservers
from server.dev.pgbouncer import PgBouncer, pgbouncer_executable, start_pgbouncer
from server.schema import migrate
from tests.conftest import IN_SCHEMA, StartApp, key
from tests.receiver import SECRET, Receiver

pytestmark = pytest.mark.skipif(pgbouncer_executable() is None,
                                reason="no pgbouncer (make test installs it)")

ACCOUNTS = 12
DEBITS_EACH = 10  # of 6 credits: each account goes 100 -> 40, below the threshold of 50
SERVER_SESSIONS = 3  # PgBouncer's pool: the server's 20 connections share 3 sessions


@pytest.fixture(scope="module")
def bouncer(postgres: devservers.PostgresServer) -> Iterator[PgBouncer]:
    with start_pgbouncer(postgres, pool_size=SERVER_SESSIONS) as running:
        yield running


@asynccontextmanager
async def own_database(postgres: devservers.PostgresServer, schema: str = "balance"
                       ) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A database of its own, migrated directly (migrate needs a session), and a direct
    connection to it; dropped after."""
    name = f"pooled_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(postgres.url.rsplit("/", 1)[0] + f"/{name}",
                                 server_settings=IN_SCHEMA)
    try:
        await migrate(conn, schema=schema)
        yield name, conn
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(scope="module")
async def pooled_db(postgres: devservers.PostgresServer) -> AsyncIterator[str]:
    """Its settings (webhooks on, a catalog threshold) are this deployment's, not the shared
    database's."""
    async with own_database(postgres) as (name, _):
        yield name


async def test_a_custom_startup_parameter_is_refused(bouncer: PgBouncer, pooled_db: str) -> None:
    """This PgBouncer is as strict as the hosted ones, so the test below fails for a server
    that sends a parameter of its own (the server sent `balance.events` before)."""
    url = bouncer.url(pooled_db).split("?")[0]
    with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
        await asyncpg.connect(url, server_settings={"balance.events": "balance.low"})


async def debit_all(c: httpx.AsyncClient, accounts: list[str], amount: int) -> float:
    started = time.perf_counter()
    replies = await asyncio.gather(*(
        c.post(f"/v1/accounts/{a}/debit", json={"amount": amount, "reason": "gen",
                                                 "idempotency_key": f"{a}-{i}"})
        for a in accounts for i in range(DEBITS_EACH)))
    assert [r.status_code for r in replies] == [200] * len(replies), replies[0].text
    return time.perf_counter() - started


async def timed_debits(c: httpx.AsyncClient) -> float:
    """Seconds for ACCOUNTS x DEBITS_EACH concurrent debits, after as many to warm up (each
    pool connection learns its types, each server session plans the functions)."""
    seconds = []
    for _ in range(2):
        accounts = [f"timed-{uuid.uuid4().hex[:8]}" for _ in range(ACCOUNTS)]
        for a in accounts:
            r = await c.post(f"/v1/accounts/{a}/credit", json={
                "amount": 100, "kind": "grant", "idempotency_key": key()})
            assert r.status_code == 200, r.text
        seconds.append(await debit_all(c, accounts, 1))
    return seconds[-1]


async def test_money_alerts_and_app_webhooks_through_pgbouncer(
    start_app: StartApp, bouncer: PgBouncer, pooled_db: str, postgres: devservers.PostgresServer,
    receiver: Receiver, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"prices": {"gen": 6}, "alerts": {"low_balance": 50}}))
    hooked: dict[str, Any] = {
        "catalog_file": str(catalog), "app_webhook_url": receiver.url,
        "app_webhook_secret": SECRET, "app_webhook_events": ("balance.low", "hold.expired"),
        "app_webhook_retry": (0.2, 0.2)}
    app = await start_app(database_url=bouncer.url(pooled_db), **hooked)
    accounts = [f"pooled-{uuid.uuid4().hex[:8]}" for _ in range(ACCOUNTS)]
    direct = postgres.url.rsplit("/", 1)[0] + f"/{pooled_db}"
    db = await asyncpg.connect(direct, server_settings=IN_SCHEMA)
    try:
        async with app.client() as c:
            for a in accounts:
                r = await c.post(f"/v1/accounts/{a}/credit", json={
                    "amount": 100, "kind": "grant", "idempotency_key": key()})
                assert r.status_code == 200, r.text
            await debit_all(c, accounts, 6)
            again = await debit_all(c, accounts, 6)  # the same keys: replays, nothing moves
            pooled_seconds = await timed_debits(c)
            hold = await c.post(f"/v1/accounts/{accounts[0]}/holds", json={
                "amount": 10, "reason": "job", "idempotency_key": key()})
            assert hold.status_code == 201, hold.text
            captured = await c.post(f"/v1/holds/{hold.json()['hold']['id']}/capture",
                                    json={"amount": 4})
            assert captured.status_code == 200, captured.text
            for a in accounts:
                body = (await c.get(f"/v1/accounts/{a}")).json()
                expected = 100 - 6 * DEBITS_EACH - (4 if a == accounts[0] else 0)
                assert (body["balance"], body["low"]) == (expected, True), body
        # Every crossing below the catalog's 50 was written and delivered, once each.
        deadline = time.monotonic() + 15
        while sum(len(receiver.of(a, "balance.low")) for a in accounts) < ACCOUNTS:
            assert time.monotonic() < deadline, [len(receiver.of(a)) for a in accounts]
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert [len(receiver.of(a, "balance.low")) for a in accounts] == [1] * ACCOUNTS
        assert await db.fetchval("SELECT count(*) FROM transactions WHERE account_id"
                                 " = ANY($1)", accounts) == ACCOUNTS * (1 + DEBITS_EACH) + 1
        assert await db.fetch("SELECT * FROM balance_reconcile()") == []
        # The server really went through the pooler: its sessions are PgBouncer's few.
        assert await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            " AND application_name = 'balance-server'", pooled_db) <= SERVER_SESSIONS
    finally:
        await app.stop()
        await db.close()
    # The same debits straight to PostgreSQL, in the same run: what the pooler costs.
    direct_app = await start_app(database_url=direct, **hooked)
    try:
        async with direct_app.client() as c:
            direct_seconds = await timed_debits(c)
    finally:
        await direct_app.stop()
    n = ACCOUNTS * DEBITS_EACH
    with capsys.disabled():
        print(f"\npooler: {n} concurrent debits through PgBouncer (transaction mode, "
              f"{SERVER_SESSIONS} server sessions) {n / pooled_seconds:.0f}/s (replays "
              f"{n / again:.0f}/s); direct, same run {n / direct_seconds:.0f}/s; "
              f"ratio {direct_seconds / pooled_seconds:.2f}")



async def test_a_schema_of_another_name_through_the_pooler(
    start_app: StartApp, bouncer: PgBouncer, postgres: devservers.PostgresServer
) -> None:
    """BALANCE_DB_SCHEMA=credits: migrate creates everything there and the server's SQL
    names it there (server/db.py renames `balance.` in its statements)."""
    async with own_database(postgres, schema="credits") as (name, conn):
        app = await start_app(database_url=bouncer.url(name), db_schema="credits",
                              welcome_credits=7)
        account = f"other-{uuid.uuid4().hex[:8]}"
        async with app.client() as c:
            assert (await c.get(f"/v1/accounts/{account}")).json()["balance"] == 7
            r = await c.post(f"/v1/accounts/{account}/debit",
                             json={"amount": 2, "reason": "r", "idempotency_key": key()})
            assert r.status_code == 200 and r.json()["account"]["balance"] == 5, r.text
            history = (await c.get(f"/v1/accounts/{account}/transactions")).json()
            assert [t["amount"] for t in history["transactions"]] == [-2, 7]
            grants = (await c.get(f"/v1/accounts/{account}/grants")).json()["grants"]
            assert [g["remaining"] for g in grants] == [5]
        await app.stop()
        assert await conn.fetchval("SELECT balance FROM credits.accounts") == 5
        assert await conn.fetchval("SELECT to_regclass('balance.accounts')") is None
