"""The PostgreSQL pool, and what its errors say about whether a statement was written."""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server import errors
from server.config import Database, Settings

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


# The statement failed whole and wrote nothing, and running it again is how it succeeds: a
# concurrent request with the same idempotency key committed first (schema.sql
# balance__keep; the run again replays it), or a deadlock with a batch holding the account.
RUN_AGAIN: tuple[type[Exception], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)
ATTEMPTS = 3


# A connection, or a pool's proxy of one (what `pool.acquire()` hands out).
Connection = asyncpg.Connection | PoolConnectionProxy


def jsonb(value: Any) -> str | None:
    """A value as the text of a jsonb parameter (None stays SQL NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


# Run in the statement's transaction, with its rows: what else that change must commit with.
Then = Callable[[Connection, list[asyncpg.Record]], Awaitable[None]]


async def movement(pool: asyncpg.Pool, sql: str, *args: Any,
                   then: Then | None = None) -> asyncpg.Record:
    """Run one statement that writes; its one row.

    A failure to get a connection is the DB_DOWN 503 `unavailable` (nothing was sent); a
    failure after sending is 503 `outcome_unknown`, never "nothing was written": a retry
    with the same idempotency key returns what committed, or performs it once. A statement
    that failed whole for a reason in RUN_AGAIN is run again, up to ATTEMPTS times.
    """
    rows = await movements(pool, sql, *args, then=then)
    assert len(rows) == 1
    return rows[0]


def _unknown(exc: Exception) -> Exception:
    # asyncpg's DataError (an InterfaceError and a ValueError) is raised while encoding the
    # arguments, before anything is sent: it is a bug of ours, not an unknown outcome.
    return exc if isinstance(exc, ValueError) else errors.outcome_unknown()


async def movements(pool: asyncpg.Pool, sql: str, *args: Any,
                    then: Then | None = None) -> list[asyncpg.Record]:
    """As `movement`, for a statement that answers several rows. `then` runs in its
    transaction (an operator action's audit row: server/audit.py)."""
    async with pool.acquire() as conn:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if then is None:
                    return list(await conn.fetch(sql, *args))
                async with conn.transaction():
                    rows = list(await conn.fetch(sql, *args))
                    await then(conn, rows)
                return rows
            except RUN_AGAIN:
                if attempt == ATTEMPTS:
                    raise
            except LOST_AFTER_SENDING as exc:
                raise _unknown(exc) from None
    raise AssertionError("unreachable")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's RESET ALL on release: we never change session state, and the reset
    was a full extra round trip on every request (about a fifth of the debit path)."""


def behind_pooler(database: Database) -> bool:
    """Whether DATABASE_URL is a transaction-mode pooler: as configured, else as the URL
    says. Prisma's `?pgbouncer=true`; Supabase's poolers on port 6543 (5432 there is session
    mode or direct); Neon's pooled endpoints, whose host ends its first label in `-pooler`."""
    if database.pooler != "auto":
        return database.pooler == "transaction"
    parts = urlsplit(database.url)
    if dict(parse_qsl(parts.query)).get("pgbouncer", "").lower() in ("true", "1"):
        return True
    host = parts.hostname or ""
    return ((host.endswith((".pooler.supabase.com", ".supabase.co")) and parts.port == 6543)
            or host.split(".", 1)[0].endswith("-pooler"))


# Prisma's own URL parameters: a URL copied from a Prisma app carries them, and asyncpg
# would send each as a startup parameter, which PostgreSQL and poolers refuse.
_PRISMA_ONLY = frozenset({"pgbouncer", "connection_limit", "pool_timeout", "socket_timeout",
                          "schema", "statement_cache_size"})


def dsn(database: Database) -> str:
    """DATABASE_URL without Prisma's parameters (the pooler it names is read first)."""
    parts = urlsplit(database.url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in _PRISMA_ONLY]
    return urlunsplit(parts._replace(query=urlencode(query)))


# Our SQL in Python names each object `balance.<name>`; `_InSchema` renames them for a
# deployment that chose another schema. Not after a word character, a dot or a quote: so
# a setting such as 'balance.alerts_silent' is left alone.
_OURS = re.compile(r"(?<![\w.'\"])balance\.(?=[a-z_])")


@functools.lru_cache(maxsize=1024)
def in_schema(sql: str, schema: str) -> str:
    """`sql` with our objects named in `schema` (the statements are a fixed set)."""
    return sql if schema == "balance" else _OURS.sub(f'"{schema}".', sql)


class _InSchema(asyncpg.Connection):
    """A connection that names our objects in another schema than `balance`. asyncpg's
    `connection_class` is its supported way to wrap the query methods the pool calls."""

    schema = "balance"

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await super().execute(in_schema(query, self.schema), *args, **kwargs)

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> Any:
        return await super().executemany(in_schema(command, self.schema), args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await super().fetch(in_schema(query, self.schema), *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await super().fetchrow(in_schema(query, self.schema), *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await super().fetchval(in_schema(query, self.schema), *args, **kwargs)


def connection_class(schema: str) -> type[asyncpg.Connection]:
    if schema == "balance":
        return asyncpg.Connection
    return type("InSchema", (_InSchema,), {"schema": schema})


def pool_options(database: Database) -> dict[str, Any]:
    """What every pool of ours (the server's, the CLI's) is created with.

    No startup parameter but application_name, which poolers pass on: PgBouncer refuses
    unknown ones (and `ignore_startup_parameters` would drop them silently). Behind a
    transaction-mode pooler, asyncpg keeps no prepared statement across statements
    (statement_cache_size=0, its documented setting): each transaction may run on another
    server session. It then sends each statement's Parse again with its Bind, Execute and
    Sync (asyncpg#1065: PgBouncer may hand the Bind to another session after the Flush that
    ends the describe), so nothing relies on a session's state.
    """
    options: dict[str, Any] = {
        "dsn": dsn(database),
        "server_settings": {"application_name": "balance-server"},
        "connection_class": connection_class(database.schema),
    }
    if behind_pooler(database):
        options["statement_cache_size"] = 0
    return options


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The server's pool, with a few connections opened ahead of traffic if PostgreSQL is up."""
    pool = await asyncpg.create_pool(
        min_size=0,
        max_size=settings.db_pool_size,
        timeout=5,
        command_timeout=30,
        reset=_keep_session,
        **pool_options(settings.database),
    )
    assert pool is not None
    with contextlib.suppress(*DB_DOWN):  # a database that is down is not fatal at start
        conns = [await pool.acquire() for _ in range(min(4, settings.db_pool_size))]
        for conn in conns:
            await pool.release(conn)
    return pool
