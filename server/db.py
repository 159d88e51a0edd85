"""The PostgreSQL pool, and which of its errors mean "the database is not reachable"."""

from __future__ import annotations

import contextlib

import asyncpg

from server.config import Settings

# Answered 503 "nothing was written": the transaction never reached a commit.
DB_DOWN: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    TimeoutError,
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's RESET ALL on release: we never change session state, and the reset
    was a full extra round trip on every request (about a fifth of the debit path)."""


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The server's pool, with a few connections opened ahead of traffic if PostgreSQL is up."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=settings.db_pool_size,
        timeout=5,
        command_timeout=30,
        server_settings={"application_name": "balance-server", "jit": "off"},
        reset=_keep_session,
    )
    assert pool is not None
    with contextlib.suppress(*DB_DOWN):  # a database that is down is not fatal at start
        conns = [await pool.acquire() for _ in range(min(4, settings.db_pool_size))]
        for conn in conns:
            await pool.release(conn)
    return pool
