"""Short collector pauses with thousands of sockets: what outlives a burst is frozen.

A full pass of Python's cyclic collector walks every tracked object, so with 10,000 open
sockets the objects that live as long as their socket made full passes take hundreds of
milliseconds, whenever one happened to fall due. Objects that survive a burst of new
sockets are moved out of the collector's reach (`gc.freeze()`, a constant-time splice)
once the burst has settled or after every FREEZE_AFTER sockets: a young collection first,
so that short-lived cycles are collected rather than frozen.

Frozen objects are still freed by reference counting; only a reference cycle among them
would never be. A socket's objects hold no cycle once it closes (push/protocol.py; tested
in tests/push/test_protocol.py), so what freezing can keep is what was cyclic garbage in
the oldest generation at that moment.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("balance.heap")

FREEZE_AFTER = 256  # sockets opened since the last freeze
SETTLE = 0.5  # seconds without a new socket before fewer than FREEZE_AFTER are frozen


class Heap:
    """Counts new long-lived objects (sockets) and freezes them in batches."""

    def __init__(self) -> None:
        self._since = 0
        self._timer: asyncio.TimerHandle | None = None

    def grew(self) -> None:
        """One more socket (its objects live as long as it does)."""
        self._since += 1
        if self._since >= FREEZE_AFTER:
            self.freeze()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SETTLE, self.freeze)

    def freeze(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._since:
            return
        self._since = 0
        started = time.perf_counter()
        gc.collect(1)
        gc.freeze()
        log.debug("froze the heap in %.1f ms", (time.perf_counter() - started) * 1000)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
