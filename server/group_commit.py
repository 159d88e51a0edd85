"""Group commit: concurrent balance_post calls share one round trip and one commit.

While `max_inflight` batches are running, new calls queue; each finished batch sends
everything queued as the next one. Idle, a call goes out alone at once, so batching adds no
latency; under load it turns N round trips and N commits into one.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg

from server import metrics
from server.audit import Audit
from server.db import Connection, movement, movements

_POST_SQL = (
    "SELECT (r).* FROM"
    " (SELECT balance.balance_post($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10,NULL,$11,$12,$13) r) s"
)
_POST_MANY_SQL = (
    "SELECT idx, (result).* FROM balance.balance_post_many("
    "$1::text[],$2,$3::text[],$4::bytea[],$5::text[],$6::bigint[],$7::text[],$8::jsonb[],"
    "$9::timestamptz[],$10::text[],$11::int[],$12::text[],$13::bigint[])"
)
# (account, key, hash, kind, amount, reason, metadata json, expires_at, mode, priority,
#  operation, quantity): the last two only for a charge, which SQL prices by plan.
PostArgs = tuple[
    str, str, bytes, str, int, "str | None", "str | None", "datetime | None", str, "int | None",
    "str | None", "int | None",
]


class GroupCommit:
    """Batches concurrent balance_post calls into one round trip and one commit."""

    def __init__(self, pool: asyncpg.Pool, welcome: int, max_inflight: int, max_batch: int = 128):
        self._pool = pool
        self._welcome = welcome
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._inflight = 0
        self._queue: list[tuple[PostArgs, Audit | None, asyncio.Future[asyncpg.Record]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, args: PostArgs, audit: Audit | None = None) -> asyncpg.Record:
        """balance_post(args) once it committed, alone or in a batch; an operator's with its
        audit row, in the same transaction."""
        future: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._queue.append((args, audit, future))
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

    async def _run(
        self, batch: list[tuple[PostArgs, Audit | None, asyncio.Future[asyncpg.Record]]]
    ) -> None:
        metrics.batch_size.observe(len(batch))
        try:
            if len(batch) == 1:
                await self._one(*batch[0])
            else:
                await self._many(batch)
        finally:
            self._inflight -= 1
            self._dispatch()

    async def _one(self, args: PostArgs, audit: Audit | None,
                   future: asyncio.Future[asyncpg.Record]) -> None:
        try:
            row = await movement(self._pool, _POST_SQL, args[0], self._welcome, *args[1:],
                                 then=None if audit is None else audit.after)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not future.done():
                future.set_result(row)

    async def _many(
        self, batch: list[tuple[PostArgs, Audit | None, asyncio.Future[asyncpg.Record]]]
    ) -> None:
        columns = list(zip(*(args for args, _, _ in batch), strict=True))
        audits = {i: audit for i, (_, audit, _) in enumerate(batch, 1) if audit is not None}

        async def record(conn: Connection, rows: list[asyncpg.Record]) -> None:
            for row in rows:  # each operator's item's audit row, in the batch's transaction
                audit = audits.get(row["idx"])
                if audit is not None:
                    await audit.after(conn, [row])

        try:
            rows = await movements(self._pool, _POST_MANY_SQL, columns[0], self._welcome,
                                   *columns[1:], then=record if audits else None)
        except asyncpg.PostgresError:
            # One bad item, a deadlock with another multi-account transaction, or a key that
            # a concurrent request committed first rolled the whole batch back, so nothing
            # of it committed: run each on its own.
            await asyncio.gather(*(self._one(args, audit, future)
                                   for args, audit, future in batch))
            return
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for row in rows:
            future = batch[row["idx"] - 1][2]
            if not future.done():
                future.set_result(row)
