"""After a commit: encode the frame once, hand it to this process's hub, publish it to the rest.

Why fire-and-forget after commit and not an outbox: PostgreSQL is the truth and every
frame carries absolute state (balance, held, available, version), so a lost publish is
healed by sending the current row, not by replaying history. A frame that could not be
published (the broker is down, or the publish failed) leaves its account in a bounded
set; once the broker takes publishes again, the current state of each of those accounts
is read from PostgreSQL and published, so the other instances hear of every change this
one committed while it was cut off. (Each instance also resyncs its own sockets when its
subscriber reconnects: that covers what the others published while it was away.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from server import metrics
from server.messages import BalanceFrame, encoder
from server.push.broker.base import Broker, Unpublished
from server.push.snapshots import Snapshot

log = logging.getLogger("balance.publisher")

OUTBOX_LIMIT = 10_000  # frames awaiting publish; beyond this the oldest become "missed"
PUBLISH_BATCH = 256
MISSED_LIMIT = 100_000  # accounts remembered as unpublished; beyond, every hub resyncs all
MISSED_RETRY = 0.1  # seconds between checks for the broker's return while some are missed

Local = Callable[[str, int, bytes], None]
"""This process's delivery (Hub.deliver): account id, version, frame JSON."""


def account_channel(prefix: str, account_id: str) -> str:
    """The broker channel of one account's frames."""
    return f"{prefix}:acct:{account_id}"


def resync_channel(prefix: str) -> str:
    """The channel that asks every hub to resync all its sockets from PostgreSQL."""
    return f"{prefix}:resync"


class Publisher:
    """The ledger's on-commit hook for push: never blocks, never fails the caller."""

    def __init__(
        self, broker: Broker, local: Local, channel_prefix: str, snapshot: Snapshot
    ) -> None:
        self._broker = broker
        self._local = local
        self._snapshot = snapshot
        # The push path is hot: the account channel is this prefix + the account id.
        self._channels = account_channel(channel_prefix, "")
        self._resync = resync_channel(channel_prefix)
        self._outbox: list[tuple[str, bytes]] = []
        # Accounts whose newest change did not reach the broker (a dict keeps their order).
        self._missed: dict[str, None] = {}
        self._missed_all = False  # more than MISSED_LIMIT: ask every hub for a full resync
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pump = asyncio.create_task(self._run(), name="publisher")

    async def stop(self) -> None:
        """Stop publishing; bounded, and a cancellation of stop() itself still propagates."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.wait({self._pump}, timeout=3.0)
            self._pump = None

    def publish(self, frame: BalanceFrame) -> None:
        """Encode once; deliver here at once, and queue for the other instances."""
        try:
            data = encoder.encode(frame)
            self._local(frame.account_id, frame.version, data)
            if len(self._outbox) >= OUTBOX_LIMIT:
                self._miss(self._outbox[:PUBLISH_BATCH])
                del self._outbox[:PUBLISH_BATCH]
            self._outbox.append((self._channels + frame.account_id, data))
            self._wake.set()
        except Exception:  # the change is committed; a lost frame is healed by sync/resync
            log.exception("publish of %s v%s failed", frame.account_id, frame.version)
            metrics.publish_failures.inc()

    async def _run(self) -> None:
        while True:
            if self._missed or self._missed_all:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), MISSED_RETRY)
            else:
                await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = self._outbox[:PUBLISH_BATCH]
                del self._outbox[:PUBLISH_BATCH]
                try:
                    await self._broker.publish(batch)
                except Unpublished as exc:  # a cluster master is down; the rest went out
                    self._miss(exc.messages)
                except Exception as exc:
                    if self._broker.connected:  # (known down: said once, by the broker)
                        log.warning("publish of %d frames failed: %r", len(batch), exc)
                    self._miss(batch)
            if (self._missed or self._missed_all) and self._broker.connected:
                await self._republish()

    def _miss(self, batch: Sequence[tuple[str, bytes]]) -> None:
        metrics.publish_failures.inc(len(batch))
        if self._missed_all:
            return
        start = len(self._channels)
        for channel, _ in batch:
            self._missed[channel[start:]] = None
        if len(self._missed) > MISSED_LIMIT:
            log.warning("over %d accounts unpublished: every instance will resync", MISSED_LIMIT)
            self._missed.clear()
            self._missed_all = True

    async def _republish(self) -> None:
        """Publish the current state of every missed account, read from PostgreSQL now."""
        try:
            if self._missed_all:
                await self._broker.publish([(self._resync, b"")])
                self._missed_all = False
            while self._missed and self._broker.connected:
                # Taken out before the read: a commit during it marks its account again.
                accounts = list(self._missed)[:PUBLISH_BATCH]
                for account_id in accounts:
                    del self._missed[account_id]
                try:
                    frames = await self._snapshot(accounts)
                    await self._broker.publish(
                        [(self._channels + f.account_id, encoder.encode(f)) for f in frames])
                except BaseException:
                    for account_id in accounts:
                        self._missed[account_id] = None
                    raise
            if not self._missed:
                log.info("republished every change made while the broker was away")
        except Exception as exc:  # retried on the next round
            log.warning("republish after the broker's return failed: %r", exc)
