"""The PostgreSQL pool, and what its errors say about whether a statement was written."""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg

from server import errors
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


# After the statement was sent, these leave its outcome unknown: it may have committed (a
# connection lost before the reply, a client-side command_timeout, the backend terminated).
LOST_AFTER_SENDING: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    OSError,
    TimeoutError,
)


async def movement(pool: asyncpg.Pool, sql: str, *args: Any) -> asyncpg.Record:
    """Run one statement that writes; its one row.

    A failure to get a connection is the DB_DOWN 503 `unavailable` (nothing was sent); a
    failure after sending is 503 `outcome_unknown`, never "nothing was written": a retry
    with the same idempotency key returns what committed, or performs it once.
    """
    async with pool.acquire() as conn:
        try:
            row = await conn.fetchrow(sql, *args)
        except LOST_AFTER_SENDING as exc:
            raise _unknown(exc) from None
    assert row is not None
    return row


def _unknown(exc: Exception) -> Exception:
    # asyncpg's DataError (an InterfaceError and a ValueError) is raised while encoding the
    # arguments, before anything is sent: it is a bug of ours, not an unknown outcome.
    return exc if isinstance(exc, ValueError) else errors.outcome_unknown()


async def movements(pool: asyncpg.Pool, sql: str, *args: Any) -> list[asyncpg.Record]:
    """As `movement`, for a statement that answers several rows."""
    async with pool.acquire() as conn:
        try:
            return list(await conn.fetch(sql, *args))
        except LOST_AFTER_SENDING as exc:
            raise _unknown(exc) from None


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's RESET ALL on release: we never change session state, and the reset
    was a full extra round trip on every request (about a fifth of the debit path)."""


async def open_pool(settings: Settings, low_balance: int | None) -> asyncpg.Pool:
    """The server's pool, with a few connections opened ahead of traffic if PostgreSQL is up.

    Every session carries what the alert trigger needs (schema.sql "alerts"): the app
    webhook types subscribed (none without BALANCE_APP_WEBHOOK_URL) and the catalog's
    default low_balance threshold.
    """
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=settings.db_pool_size,
        timeout=5,
        command_timeout=30,
        server_settings={
            "application_name": "balance-server", "jit": "off",
            "balance.events": ",".join(settings.app_webhook_events),
            "balance.low_balance": "" if low_balance is None else str(low_balance),
        },
        reset=_keep_session,
    )
    assert pool is not None
    with contextlib.suppress(*DB_DOWN):  # a database that is down is not fatal at start
        conns = [await pool.acquire() for _ in range(min(4, settings.db_pool_size))]
        for conn in conns:
            await pool.release(conn)
    return pool
