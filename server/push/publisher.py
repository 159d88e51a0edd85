"""After a commit: encode the frame once, hand it to this process's hub, publish it to the rest.

Why fire-and-forget after commit and not an outbox: PostgreSQL is the truth and every
frame carries absolute state (balance, held, available, version), so a lost publish is
healed by sending the current row, not by replaying history. When the broker comes back
from an outage (the only time frames can be lost in bulk) the hubs resync every socket
from PostgreSQL, and clients' periodic `sync` covers anything rarer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from server import metrics
from server.messages import BalanceFrame, encoder
from server.push.broker.base import Broker

log = logging.getLogger("balance.publisher")

OUTBOX_LIMIT = 10_000  # frames awaiting publish; beyond this the oldest are dropped (resync heals)
PUBLISH_BATCH = 256

Local = Callable[[str, int, bytes], None]
"""This process's delivery (Hub.deliver): account id, version, frame JSON."""


def account_channel(prefix: str, account_id: str) -> str:
    """The broker channel of one account's frames."""
    return f"{prefix}:acct:{account_id}"


class Publisher:
    """The ledger's on-commit hook for push: never blocks, never fails the caller."""

    def __init__(self, broker: Broker, local: Local, channel_prefix: str) -> None:
        self._broker = broker
        self._local = local
        # The push path is hot: the account channel is this prefix + the account id.
        self._channels = account_channel(channel_prefix, "")
        self._outbox: list[tuple[str, bytes]] = []
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
                del self._outbox[:PUBLISH_BATCH]
                metrics.publish_failures.inc(PUBLISH_BATCH)
            self._outbox.append((self._channels + frame.account_id, data))
            self._wake.set()
        except Exception:  # the change is committed; a lost frame is healed by sync/resync
            log.exception("publish of %s v%s failed", frame.account_id, frame.version)
            metrics.publish_failures.inc()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = self._outbox[:PUBLISH_BATCH]
                del self._outbox[:PUBLISH_BATCH]
                if not self._broker.connected:
                    # Fail fast: these frames are lost either way, and the resync after the
                    # broker's reconnect sends every socket the current state.
                    metrics.publish_failures.inc(len(batch))
                    continue
                try:
                    await self._broker.publish(batch)
                except Exception as exc:
                    log.warning("publish of %d frames failed: %r", len(batch), exc)
                    metrics.publish_failures.inc(len(batch))
