"""Snapshot reads coalesced: concurrent requests for accounts' state share one query.

A reconnect storm or the clients' periodic syncs then cost a few queries a second, not one
per socket. Every read still starts after its caller asked (after its subscribe), so no
change committed before the ask can be missing from the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from server.messages import BalanceFrame

Snapshot = Callable[[Sequence[str]], Awaitable[list[BalanceFrame]]]


class SnapshotReader:
    """Batches `read` calls that arrive in the same loop iteration (and while one runs)."""

    def __init__(self, snapshot: Snapshot, max_batch: int = 500) -> None:
        self._snapshot = snapshot
        self._max_batch = max_batch
        self._waiting: dict[str, list[asyncio.Future[BalanceFrame | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None

    async def read(self, account_ids: Sequence[str]) -> list[BalanceFrame]:
        """The current state of each account, read after this call began."""
        loop = asyncio.get_running_loop()
        futures = []
        for account_id in account_ids:
            future: asyncio.Future[BalanceFrame | None] = loop.create_future()
            self._waiting.setdefault(account_id, []).append(future)
            futures.append(future)
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, BalanceFrame)]

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let the callers of this loop iteration join the batch
            while self._waiting:
                batch = {}
                for account_id in list(self._waiting)[: self._max_batch]:
                    batch[account_id] = self._waiting.pop(account_id)
                try:
                    frames = {f.account_id: f for f in await self._snapshot(list(batch))}
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for account_id, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(frames.get(account_id))
        finally:
            self._drainer = None
