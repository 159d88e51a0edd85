"""Spend caps: at most so many credits spent and held per UTC hour, day or month.

The movements enforce a cap themselves (schema.sql balance__post, balance_hold), under the
account's row lock; this module only sets and reads it. Setting one is an operator's
action, audited in its transaction, and moves no credits: nothing is pushed.
"""

from __future__ import annotations

import asyncpg

from server.audit import Audit
from server.db import Connection, movement
from server.messages import SpendLimit

_SET_SQL = "SELECT balance.balance_set_limits($1, $2, $3, $4)::text AS limits"
_GET_SQL = "SELECT balance.balance_limits($1)::text"


async def set_limits(pool: asyncpg.Pool, welcome: int, account_id: str,
                     spend: SpendLimit | None, audit: Audit) -> bytes:
    """Set (or remove, None) the account's spend cap: `{"limits": {"spend": ... or null}}`."""
    async def record(conn: Connection, rows: list[asyncpg.Record]) -> None:
        await audit.record(conn)

    row = await movement(pool, _SET_SQL, account_id, welcome,
                         *((spend.amount, spend.period) if spend else (None, None)),
                         then=record)
    return str(row["limits"]).encode()


async def limits(pool: asyncpg.Pool, account_id: str) -> bytes:
    """`{"limits": ...}` as set_limits answers; an unknown account has no cap."""
    text: str = await pool.fetchval(_GET_SQL, account_id)
    return text.encode()
