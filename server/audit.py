"""The audit log: who did what to which account, recorded with the change itself.

Every operator action (the admin-scope mutations, and whatever the console does) is one
`audit_log` row written in the transaction of its change (server/db.py `movements`), so an
action that committed is always in the log and one that did not never is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from server.db import Connection, jsonb

_RECORD_SQL = "SELECT balance.balance_audit_record($1, $2, $3, $4, $5, $6::jsonb)"
_PAGE_SQL = "SELECT * FROM balance.balance_audit_page($1, $2, $3)"


@dataclass(frozen=True, slots=True)
class Audit:
    """An operator action, to record with the change it makes."""

    actor: str  # the service key's name; console:<name> for a console session
    action: str  # adjust, credit, plan, alerts, limits, auto_top_up, event_retry, hold_release
    account_id: str | None
    subject: str  # what was acted on: the account, event or hold
    detail: dict[str, Any] = field(default_factory=dict)

    async def record(self, conn: Connection, transaction_id: int | None = None,
                     account_id: str | None = None) -> None:
        """Write the row on `conn`, inside the transaction of the change (`account_id`: the
        account it turned out to be, when the request named none, as a hold's release)."""
        await conn.execute(_RECORD_SQL, self.actor, self.action, self.account_id or account_id,
                           self.subject, transaction_id, jsonb(self.detail))

    async def after(self, conn: Connection, rows: list[asyncpg.Record]) -> None:
        """Record a movement's action when it changed something: not a replay, not a
        refusal (the last row is the movement's answer)."""
        if rows and rows[-1]["result"] == "ok" and not rows[-1]["replayed"]:
            await self.record(conn, rows[-1]["tx_id"], rows[-1]["account_id"])


async def page(pool: asyncpg.Pool, account_id: str | None, before: int | None,
               limit: int) -> bytes:
    """`{"entries": [...], "next": cursor}`, newest first."""
    row = await pool.fetchrow(_PAGE_SQL, account_id, before, limit)
    assert row is not None
    cursor = "null" if row["cursor"] is None else str(row["cursor"])
    return f'{{"entries":{row["page"]},"next":{cursor}}}'.encode()
