"""What happened to an account: its transactions, newest first, and its spending grouped."""

from __future__ import annotations

from datetime import datetime

from server.ledger import Ledger

_DAY = "to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
# GET .../usage?group_by=: the SQL of each group's key, and of its reason (NULL: not asked).
_USAGE_KEYS = {"reason": ("t.reason", "NULL::text"), "day": (_DAY, "NULL::text"),
               "day,reason": (_DAY, "t.reason")}
USAGE_GROUPS = tuple(_USAGE_KEYS)
KINDS = ("grant", "purchase", "usage", "refund", "reversal", "adjustment", "expiry", "allowance")


class History:
    """Read-only queries over the ledger's tables, answered as response JSON."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._pool = ledger.pool

    async def transactions(
        self, account_id: str, *, limit: int, before: int | None, kind: str | None
    ) -> bytes:
        """A page of history, newest first, as `{"transactions": [...], "next": cursor}`."""
        page, cursor = await self._page(account_id, limit, before, kind)
        next_json = "null" if cursor is None else f'"{cursor}"'
        return f'{{"transactions":{page},"next":{next_json}}}'.encode()

    async def _page(
        self, account_id: str, limit: int, before: int | None, kind: str | None
    ) -> tuple[str, int | None]:
        """(JSON array of up to `limit` transactions, cursor for the next page or None)."""
        row = await self._pool.fetchrow("SELECT * FROM balance.balance_history($1, $2, $3, $4)",
                                        account_id, before, kind, limit)
        assert row is not None
        return row["page"], row["cursor"]

    async def usage(
        self, account_id: str, *, since: datetime | None, until: datetime | None, group_by: str
    ) -> bytes:
        """Spending (usage transactions only) grouped by reason, UTC day, or both (each
        day's groups carry their `reason`)."""
        key, reason = _USAGE_KEYS[group_by]
        text: str = await self._pool.fetchval(
            f"""
            SELECT jsonb_build_object('groups', COALESCE(jsonb_agg(
                jsonb_build_object('key', g.key, 'amount', g.amount, 'count', g.count)
                {"|| jsonb_build_object('reason', g.reason)" if group_by == "day,reason" else ""}
                ORDER BY g.key, g.reason), '[]'::jsonb))::text
            FROM (
                SELECT {key} AS key, {reason} AS reason, -sum(t.amount)::bigint AS amount,
                       count(*) AS count
                FROM balance.transactions t
                WHERE t.account_id = $1 AND t.kind = 'usage'
                  AND ($2::timestamptz IS NULL OR t.created_at >= $2)
                  AND ($3::timestamptz IS NULL OR t.created_at < $3)
                GROUP BY 1, 2
            ) g
            """,
            account_id, since, until,
        )
        return text.encode()

    async def grants(self, account_id: str) -> bytes:
        """`{"grants": [...]}`: the account's open grants in the order they are spent."""
        text: str = await self._pool.fetchval("SELECT balance.balance_grants($1)::text",
                                              account_id)
        return text.encode()

    async def holds(self, account_id: str) -> bytes:
        """`{"holds": [...]}`: the account's active holds, soonest to expire first."""
        text: str = await self._pool.fetchval("SELECT balance.balance_holds($1)::text",
                                              account_id)
        return text.encode()

    async def latest(self, account_id: str, limit: int = 20) -> bytes:
        """`{"accounts": [account], "transactions": [latest]}` for GET /v1/me."""
        account = await self._ledger.account(account_id)
        page, _ = await self._page(account_id, limit, None, None)
        return b'{"accounts":[' + account + b'],"transactions":' + page.encode() + b"}"
