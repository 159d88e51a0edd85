"""One pub/sub connection to one Redis node, kept subscribed to its channels across failures.

Our own loop rather than redis-py's silent auto-reconnect, because the hub must know when
messages may have been missed: a connection that comes back (or a channel that had to move)
is reported through `on_up` with the channels concerned, and the hub resyncs their sockets
from PostgreSQL. Classic channels use SUBSCRIBE; sharded ones (Redis Cluster) SSUBSCRIBE,
one command per hash slot, since one SSUBSCRIBE may not span slots (CROSSSLOT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from server.push.broker.base import OnMessage, OnReconnect

log = logging.getLogger("balance.broker")

FAILURES = (RedisError, OSError, TimeoutError)
"""What a Redis call raises when the node is unreachable, or answers with an error."""

SHUTDOWN_STEP = 3.0  # seconds: a shutdown must finish even if redis-py is stuck

OnDown = Callable[[BaseException], None]

OnLost = Callable[[frozenset[str]], None]
"""Called with channels the node dropped (their slot moved away): no longer subscribed here."""


@dataclass(frozen=True, slots=True)
class Timing:
    """How fast a subscriber notices a dead node and how it retries (seconds)."""

    ping_interval: float = 1.0  # PING when nothing arrived for this long
    dead_after: float = 5.0  # no reply at all for this long: reconnect
    confirm_timeout: float = 1.0  # the longest a subscribe waits for the node's confirmation
    backoff_min: float = 0.05
    backoff_max: float = 1.0

    def backoff(self, failures: int) -> float:
        """Seconds to wait after this many failures in a row: exponential, jittered."""
        delay = min(self.backoff_max, self.backoff_min * 2 ** min(failures - 1, 10))
        return random.uniform(delay / 2, delay)


DEFAULT_TIMING = Timing()


class Subscriber:
    """Channels on one node's connection; reconnects by itself with jittered backoff."""

    def __init__(
        self,
        client: Redis,
        on_message: OnMessage,
        *,
        sharded: bool = False,
        on_up: OnReconnect | None = None,
        on_down: OnDown | None = None,
        on_lost: OnLost | None = None,
        timing: Timing = DEFAULT_TIMING,
    ) -> None:
        self._client = client
        self._on_message = on_message
        self._sharded = sharded
        self._on_up = on_up
        self._on_down = on_down
        self._on_lost = on_lost
        self._timing = timing
        self._confirm_kind = "ssubscribe" if sharded else "subscribe"
        self._message = "smessage" if sharded else "message"
        # Always subscribed (classic SUBSCRIBE, never published), so the connection is read
        # even with no channels of ours on it.
        self._own = f"__balance_broker__:{uuid.uuid4().hex}"
        self.channels: set[str] = set()
        self._leaving: Counter[str] = Counter()  # our SUNSUBSCRIBEs not yet confirmed
        self._confirms: dict[str, asyncio.Future[bool]] = {}  # True: confirmed
        self._pubsub: PubSub | None = None
        self._connecting = False
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, *, name: str) -> None:
        self._task = asyncio.create_task(self._run(), name=name)

    async def stop(self) -> None:
        """Cancel the loop and close the client; each step bounded by SHUTDOWN_STEP."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=SHUTDOWN_STEP)
            self._task = None
        with contextlib.suppress(*FAILURES):
            await asyncio.wait_for(self._client.aclose(), SHUTDOWN_STEP)

    async def add(self, channels: Collection[str]) -> bool:
        """Subscribe; True once the node confirmed every channel. False when the node is
        down or not yet connected: they are subscribed when it is, and reported through
        `on_up` then."""
        self.channels.update(channels)
        pubsub = self._pubsub
        if pubsub is None:
            if self._connecting:  # the connect sequence subscribes them: wait for that
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ready.wait(), self._timing.confirm_timeout)
            return self.ready.is_set()
        loop = asyncio.get_running_loop()
        waits = []
        for channel in channels:
            confirm = self._confirms.get(channel)
            if confirm is None:
                confirm = self._confirms[channel] = loop.create_future()
            waits.append(confirm)
        try:
            async with asyncio.timeout(self._timing.confirm_timeout):
                await self._send(pubsub, channels, subscribe=True)
                confirmed = await asyncio.gather(*(asyncio.shield(w) for w in waits))
        except FAILURES:
            # Part of them may never have been sent: a new connection subscribes them all
            # and reports them.
            await self._reconnect(pubsub)
            return False
        return all(confirmed) and self.ready.is_set()

    async def discard(self, channels: Collection[str]) -> None:
        """Unsubscribe (best effort: a connection that fails forgets them anyway)."""
        self.channels.difference_update(channels)
        pubsub = self._pubsub
        if pubsub is None or not channels:
            return
        try:
            async with asyncio.timeout(self._timing.confirm_timeout):
                await self._send(pubsub, channels, subscribe=False)
        except FAILURES:
            await self._reconnect(pubsub)  # which forgets every channel not wanted

    async def _reconnect(self, pubsub: PubSub) -> None:
        """Make the loop drop this connection and start a new one (unless it already did).

        Closing the PubSub is not enough: redis-py would open a fresh connection with no
        subscriptions on its next command. The loop sees the swap and raises instead."""
        if self._pubsub is pubsub:
            self._pubsub = None
            connection = pubsub.connection
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.disconnect()  # wakes the loop's read at once

    async def _send(
        self, pubsub: PubSub, channels: Collection[str], *, subscribe: bool, live: bool = True
    ) -> None:
        """SUBSCRIBE/SSUBSCRIBE (or the UNSUBSCRIBEs) on this connection. `live`: only while
        it is still the loop's, since redis-py would open a new, never-read connection for
        a command on a PubSub the loop closed."""
        if not channels:
            return
        groups = [list(channels)] if not self._sharded else _by_slot(channels)
        if self._sharded and not subscribe:
            self._leaving.update(channels)
        for group in groups:
            if live and self._pubsub is not pubsub:
                raise RedisConnectionError("the connection was replaced")
            if self._sharded:
                await (pubsub.ssubscribe if subscribe else pubsub.sunsubscribe)(*group)
            else:
                await (pubsub.subscribe if subscribe else pubsub.unsubscribe)(*group)

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        failures = 0
        ever_connected = False
        while True:
            pubsub = self._client.pubsub()
            self._connecting = True
            try:
                initial = set(self.channels)
                await pubsub.subscribe(self._own)
                await self._send(pubsub, initial, subscribe=True, live=False)
                self._pubsub = pubsub
                # Subscriptions that changed while the commands above were on their way.
                if added := self.channels - initial:
                    await self._send(pubsub, added, subscribe=True, live=False)
                if removed := initial - self.channels:
                    await self._send(pubsub, removed, subscribe=False, live=False)
                # Redis answers in order: the PONG proves every subscription above took effect.
                await pubsub.ping(b"ready")
                await self._read(pubsub, until_pong=True)
                self._connecting = False
                self.ready.set()
                if ever_connected or failures:
                    log.warning("broker reconnected after %d failed attempts; resyncing", failures)
                # Even on the first connect: channels added before it were not live when
                # their subscribe returned.
                if self._on_up is not None and self.channels:
                    self._on_up(frozenset(self.channels))
                ever_connected = True
                failures = 0
                await self._read(pubsub, until_pong=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure means: reconnect
                if failures == 0:
                    log.warning("broker connection lost: %r", exc)
                if self._on_down is not None:
                    self._on_down(exc)
            finally:
                self._connecting = False
                self.ready.clear()
                self._pubsub = None
                self._leaving.clear()
                self._release_confirms()
                await _close(pubsub)
            failures += 1
            await asyncio.sleep(self._timing.backoff(failures))

    async def _read(self, pubsub: PubSub, *, until_pong: bool) -> None:
        loop = asyncio.get_running_loop()
        on_message = self._on_message
        message_kind = self._message
        ping_interval, dead_after = self._timing.ping_interval, self._timing.dead_after
        last_heard = loop.time()
        while True:
            try:
                msg: dict[str, Any] | None = await pubsub.get_message(timeout=ping_interval)
            except (MovedError, AskError) as exc:
                # An SSUBSCRIBE sent on a stale slot map: that slot lives elsewhere now.
                self._drop({c for c in self.channels if key_slot(c.encode()) == exc.slot_id})
                continue
            if self._pubsub is not pubsub:
                raise ConnectionError("resubscribing every channel on a new connection")
            now = loop.time()
            if msg is None:
                if now - last_heard > dead_after:
                    raise ConnectionError(f"no reply from Redis for {dead_after} s")
                await pubsub.ping()
                continue
            last_heard = now
            kind = msg["type"]
            if kind == message_kind:
                on_message(msg["channel"].decode(), msg["data"])
            elif kind == self._confirm_kind:
                confirm = self._confirms.pop(msg["channel"].decode(), None)
                if confirm is not None and not confirm.done():
                    confirm.set_result(True)
            elif kind == "sunsubscribe":
                channel = msg["channel"].decode()
                if self._leaving[channel] > 0:
                    self._leaving[channel] -= 1
                    if not self._leaving[channel]:
                        del self._leaving[channel]
                elif channel in self.channels:
                    # Not ours: the node no longer owns the channel's slot (it moved, or
                    # the node became a replica). Only this channel moves, and is resynced.
                    self._drop({channel})
            elif kind == "pong" and until_pong and msg["data"] == b"ready":
                return

    def _drop(self, channels: set[str]) -> None:
        """The node no longer holds these channels: forget them and say so."""
        if not channels:
            return
        self.channels.difference_update(channels)
        for channel in channels:
            confirm = self._confirms.pop(channel, None)
            if confirm is not None and not confirm.done():
                confirm.set_result(False)
        if self._on_lost is not None:
            self._on_lost(frozenset(channels))

    def _release_confirms(self) -> None:
        for confirm in self._confirms.values():
            if not confirm.done():
                confirm.set_result(False)
        self._confirms.clear()


def _by_slot(channels: Iterable[str]) -> list[list[str]]:
    """The channels grouped by hash slot: one SSUBSCRIBE may name channels of one slot."""
    groups: defaultdict[int, list[str]] = defaultdict(list)
    for channel in channels:
        groups[key_slot(channel.encode())].append(channel)
    return list(groups.values())


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed in redis 8
