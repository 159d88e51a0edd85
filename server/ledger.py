"""Every SQL statement. Each money movement is one round trip running one transaction.

The functions in schema.sql do the work inside PostgreSQL (conditional UPDATE, ledger
insert, idempotency record) so a debit never reads and then writes from Python.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from server import errors, metrics
from server.messages import BalanceFrame, ChangeInfo

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
# pg_advisory_lock key: two instances running `migrate` at once take turns.
_MIGRATE_LOCK = 0x62616C616E6365

_hash_encoder = msgspec.json.Encoder(order="sorted")

Pool = asyncpg.Pool


def request_hash(operation: str, body: msgspec.Struct) -> bytes:
    """Fingerprint of a request for idempotency: same key + different body is a conflict."""
    return hashlib.sha256(operation.encode() + b"\0" + _hash_encoder.encode(body)).digest()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a money movement answered: HTTP status, response JSON, and the frame to push."""

    status: int
    body: bytes
    replayed: bool
    frame: BalanceFrame | None


def _jsonb(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _outcome(row: asyncpg.Record, reason: str | None = None) -> Outcome:
    status: int = row["status"]
    body_text: str | None = row["body"]
    if status == 402:
        details = json.loads(body_text or "{}")
        raise errors.insufficient_credits(details["required"], details["available"])
    if status == 409 and row["replayed"]:
        raise errors.idempotency_conflict()
    if status == 409:
        raise errors.hold_not_active(json.loads(body_text or "{}").get("status", "unknown"))
    if status == 404:
        raise errors.not_found("no such hold")
    if status == 422:
        held = json.loads(body_text or "{}").get("held")
        raise errors.invalid_request(f"amount: must not exceed the held amount ({held})")
    frame = None
    if not row["replayed"] and row["account_id"] is not None:
        frame = frame_from_row(row, reason)
    return Outcome(status, (body_text or "{}").encode(), bool(row["replayed"]), frame)


def frame_from_row(row: asyncpg.Record, reason: str | None = None) -> BalanceFrame:
    """The push frame for a committed balance_result row."""
    hold_id = row["hold_id"]
    return BalanceFrame(
        account_id=row["account_id"],
        balance=row["balance"],
        held=row["held"],
        available=row["balance"] - row["held"],
        version=row["version"],
        change=ChangeInfo(
            kind=row["kind"],
            amount=row["amount"],
            reason=reason,
            transaction_id=row["tx_id"],
            hold_id=str(hold_id) if hold_id is not None else None,
        ),
    )


_POST_SQL = "SELECT (r).* FROM (SELECT balance_post($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10) r) s"
_POST_MANY_SQL = (
    "SELECT idx, (result).* FROM balance_post_many("
    "$1::text[],$2,$3::text[],$4::bytea[],$5::text[],$6::bigint[],$7::text[],$8::jsonb[],"
    "$9::timestamptz[],$10::text[])"
)
# (account, key, hash, kind, amount, reason, metadata json, expires_at, mode)
PostArgs = tuple[str, str, bytes, str, int, "str | None", "str | None", "datetime | None", str]


class GroupCommit:
    """Batches concurrent balance_post calls into one round trip and one commit.

    While `max_inflight` batches are running, new calls queue; each finished batch sends
    everything queued as the next one. Idle, a call goes out alone at once, so batching
    adds no latency; under load it turns N round trips and N commits into one.
    """

    def __init__(self, pool: asyncpg.Pool, welcome: int, max_inflight: int, max_batch: int = 128):
        self._pool = pool
        self._welcome = welcome
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._inflight = 0
        self._queue: list[tuple[PostArgs, asyncio.Future[asyncpg.Record]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, args: PostArgs) -> asyncpg.Record:
        future: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._queue and self._inflight < self._max_inflight:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._inflight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[PostArgs, asyncio.Future[asyncpg.Record]]]) -> None:
        metrics.batch_size.observe(len(batch))
        try:
            if len(batch) == 1:
                await self._one(*batch[0])
            else:
                await self._many(batch)
        finally:
            self._inflight -= 1
            self._dispatch()

    async def _fetch_one(self, args: PostArgs) -> asyncpg.Record:
        for attempt in range(3):
            try:
                row = await self._pool.fetchrow(_POST_SQL, args[0], self._welcome, *args[1:])
                assert row is not None
                return row
            except asyncpg.DeadlockDetectedError:
                # A batch holding this account waited on our idempotency key (a concurrent
                # duplicate); the loser rolled back whole, so retrying is safe.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _one(self, args: PostArgs, future: asyncio.Future[asyncpg.Record]) -> None:
        try:
            row = await self._fetch_one(args)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not future.done():
                future.set_result(row)

    async def _many(self, batch: list[tuple[PostArgs, asyncio.Future[asyncpg.Record]]]) -> None:
        columns = list(zip(*(args for args, _ in batch), strict=True))
        try:
            rows = await self._pool.fetch(
                _POST_MANY_SQL, columns[0], self._welcome, *columns[1:]
            )
        except asyncpg.PostgresError:
            # One bad item (or a deadlock with another multi-account transaction) rolled
            # the whole batch back, so nothing of it committed: run each on its own.
            await asyncio.gather(*(self._one(args, future) for args, future in batch))
            return
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for row in rows:
            future = batch[row["idx"] - 1][1]
            if not future.done():
                future.set_result(row)


class Ledger:
    """The ledger over one asyncpg pool."""

    def __init__(self, pool: Pool, welcome_credits: int, max_inflight: int = 1) -> None:
        self.pool = pool
        self.welcome = welcome_credits
        self._group = GroupCommit(pool, welcome_credits, max_inflight)

    async def post(
        self,
        account_id: str,
        *,
        kind: str,
        amount: int,
        reason: str | None,
        idempotency_key: str,
        fingerprint: bytes,
        metadata: dict[str, Any] | None = None,
        expires_at: datetime | None = None,
        mode: str = "available",
    ) -> Outcome:
        """One signed ledger row (debit when negative), atomically with its idempotency key."""
        row = await self._group.submit((
            account_id, idempotency_key, fingerprint, kind, amount, reason, _jsonb(metadata),
            expires_at, mode,
        ))
        return _outcome(row, reason)

    async def hold(
        self,
        account_id: str,
        *,
        amount: int,
        ttl_seconds: int,
        reason: str,
        idempotency_key: str,
        fingerprint: bytes,
        metadata: dict[str, Any] | None,
    ) -> Outcome:
        row = await self.pool.fetchrow(
            "SELECT (r).* FROM (SELECT balance_hold($1,$2,$3,$4,$5,$6,$7,$8::jsonb) r) s",
            account_id, self.welcome, idempotency_key, fingerprint, amount, ttl_seconds,
            reason, _jsonb(metadata),
        )
        assert row is not None
        return _outcome(row, reason)

    async def resolve_hold(
        self, hold_id: str, action: str, *, amount: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Outcome:
        """'capture' amount (None: all) and release the rest, or 'release' it all."""
        row = await self.pool.fetchrow(
            "SELECT (r).* FROM (SELECT balance_resolve_hold($1::uuid,$2,$3,$4::jsonb) r) s",
            hold_id, action, amount, _jsonb(metadata),
        )
        assert row is not None
        return _outcome(row)

    async def account(self, account_id: str) -> bytes:
        """The account object as JSON, creating the account on first mention."""
        text: str = await self.pool.fetchval(
            "SELECT balance_account($1, $2)::text", account_id, self.welcome
        )
        return text.encode()

    async def snapshot(self, account_ids: Sequence[str]) -> list[BalanceFrame]:
        """Current state of each account (created if new), for WebSocket snapshots."""
        if not account_ids:
            return []
        # balance_account() creates missing rows; they are read back from its own result
        # because a join in the same statement could not see rows it inserted.
        rows = await self.pool.fetch(
            "SELECT balance_account(id, $2)::text AS j FROM unnest($1::text[]) AS id",
            list(account_ids), self.welcome,
        )
        frames = []
        for row in rows:
            a = json.loads(row["j"])
            frames.append(BalanceFrame(a["account_id"], a["balance"], a["held"], a["available"],
                                       a["version"]))
        return frames

    async def transactions(
        self, account_id: str, *, limit: int, before: int | None, kind: str | None
    ) -> bytes:
        """A page of history, newest first, as `{"transactions": [...], "next": cursor}`."""
        page, cursor = await self._page(account_id, limit, before, kind)
        if page == "[]":
            # Maybe a new account: it springs into being (and may get a welcome grant).
            await self.account(account_id)
            page, cursor = await self._page(account_id, limit, before, kind)
        next_json = "null" if cursor is None else f'"{cursor}"'
        return f'{{"transactions":{page},"next":{next_json}}}'.encode()

    async def _page(
        self, account_id: str, limit: int, before: int | None, kind: str | None
    ) -> tuple[str, int | None]:
        """(JSON array of up to `limit` transactions, cursor for the next page or None)."""
        row = await self.pool.fetchrow(
            """
            WITH page AS (
                SELECT t FROM transactions t
                WHERE t.account_id = $1 AND ($2::bigint IS NULL OR t.id < $2)
                  AND ($3::text IS NULL OR t.kind = $3)
                ORDER BY t.id DESC LIMIT $4
            ), shown AS (SELECT t FROM page LIMIT $5)
            SELECT COALESCE((SELECT jsonb_agg(balance__tx_json(s.t) ORDER BY (s.t).id DESC)
                             FROM shown s), '[]'::jsonb)::text AS page,
                   CASE WHEN (SELECT count(*) FROM page) > $5
                        THEN (SELECT min((s.t).id) FROM shown s) END AS cursor
            """,
            account_id, before, kind, limit + 1, limit,
        )
        assert row is not None
        return row["page"], row["cursor"]

    async def usage(
        self, account_id: str, *, since: datetime | None, until: datetime | None, group_by: str
    ) -> bytes:
        """Spending (usage net of refunds is not mixed in) grouped by reason or UTC day."""
        key = "t.reason" if group_by == "reason" else (
            "to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        )
        text: str = await self.pool.fetchval(
            f"""
            SELECT jsonb_build_object('groups', COALESCE(jsonb_agg(
                jsonb_build_object('key', g.key, 'amount', g.amount, 'count', g.count)
                ORDER BY g.key), '[]'::jsonb))::text
            FROM (
                SELECT {key} AS key, -sum(t.amount)::bigint AS amount, count(*) AS count
                FROM transactions t
                WHERE t.account_id = $1 AND t.kind = 'usage'
                  AND ($2::timestamptz IS NULL OR t.created_at >= $2)
                  AND ($3::timestamptz IS NULL OR t.created_at < $3)
                GROUP BY 1
            ) g
            """,
            account_id, since, until,
        )
        return text.encode()

    async def latest(self, account_id: str, limit: int = 20) -> bytes:
        """`{"accounts": [account], "transactions": [latest]}` for GET /v1/me."""
        account = await self.account(account_id)  # creates it first, welcome grant included
        page, _ = await self._page(account_id, limit, None, None)
        return b'{"accounts":[' + account + b'],"transactions":' + page.encode() + b"}"

    async def sweep(self, limit: int = 500) -> list[BalanceFrame]:
        """Expire due holds and lots; the frames to push for each committed change."""
        rows = await self.pool.fetch(
            "SELECT (r).* FROM balance_sweep($1) r", limit
        )
        return [frame_from_row(r) for r in rows]

    async def forget_old_keys(self, days: int) -> int:
        """Drop idempotency records past retention; keys older than that may be reused."""
        result: str = await self.pool.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)",
            days,
        )
        return int(result.split()[-1])

    async def reconcile(self) -> list[asyncpg.Record]:
        """Accounts whose totals disagree with the ledger or with their holds."""
        return list(await self.pool.fetch("SELECT * FROM balance_reconcile()"))


async def migrate(conn: asyncpg.Connection) -> None:
    """Apply schema.sql (idempotent), one migrator at a time."""
    sql = SCHEMA_PATH.read_text()
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
    try:
        await conn.execute(sql)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK)
