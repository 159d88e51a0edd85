"""Redis broker (redis-py asyncio + hiredis): PUBLISH to a channel, one SUBSCRIBE per channel.

One publisher connection pool and one subscriber connection per process. The subscriber
is our own loop rather than redis-py's silent auto-reconnect, because the hub must know
when a reconnect happened: messages published while we were away are gone, so every
local socket is resynced from PostgreSQL afterwards (`on_reconnect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.push.broker.base import OnMessage, OnReconnect

log = logging.getLogger("balance.broker")

_FAILURES = (RedisError, OSError, TimeoutError)
_SHUTDOWN_STEP = 3.0  # seconds


class RedisBroker:
    """Pub/sub over one Redis; reconnects by itself with jittered exponential backoff."""

    def __init__(
        self,
        url: str,
        *,
        ping_interval: float = 1.0,
        dead_after: float = 5.0,
        confirm_timeout: float = 1.0,
        backoff_min: float = 0.05,
        backoff_max: float = 1.0,
    ) -> None:
        self._url = url
        self._ping_interval = ping_interval
        self._dead_after = dead_after
        self._confirm_timeout = confirm_timeout
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        # One retry covers the first command on a pooled connection that died with Redis.
        self._pub: Redis = Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 1),
        )
        # No retries: a failure must surface in our loop, not be papered over.
        self._sub: Redis = Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 0)
        )
        # Always subscribed, so the pubsub connection is read even with no account channels.
        self._own = f"__balance_broker__:{uuid.uuid4().hex}"
        self._channels: set[str] = set()
        self._confirms: dict[str, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._connecting = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_message: OnMessage | None = None
        self._on_reconnect: OnReconnect | None = None
        self._resyncs: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._task = asyncio.create_task(self._run(), name="redis-broker-subscriber")
        # Give the first connection a moment so early sockets need no resync; never fail.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=2.0)

    async def disconnect(self) -> None:
        # Every step is bounded: a shutdown must finish even if redis-py is stuck mid-reconnect.
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=_SHUTDOWN_STEP)
            self._task = None
        for task in list(self._resyncs):
            task.cancel()
        for client in (self._pub, self._sub):
            with contextlib.suppress(*_FAILURES):
                await asyncio.wait_for(client.aclose(), _SHUTDOWN_STEP)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            if self._connecting:  # the connect sequence subscribes it: wait for that
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), self._confirm_timeout)
            return  # down: subscribed on reconnect, and the hub resyncs then
        confirm = self._confirms.get(channel)
        if confirm is None:
            confirm = self._confirms[channel] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(pubsub.subscribe(channel), self._confirm_timeout)
            await asyncio.wait_for(asyncio.shield(confirm), self._confirm_timeout)
        except _FAILURES:
            pass  # the subscriber loop sees the failure too, reconnects and resyncs

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(*_FAILURES):
                await asyncio.wait_for(pubsub.unsubscribe(channel), self._confirm_timeout)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if len(messages) == 1:
            channel, data = messages[0]
            await self._pub.publish(channel, data)
            return
        async with self._pub.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(channel, data)
            await pipe.execute()

    # ------------------------------------------------------------ subscriber loop

    async def _run(self) -> None:
        failures = 0
        ever_connected = False
        while True:
            pubsub = self._sub.pubsub()
            self._connecting = True
            try:
                initial = set(self._channels)
                await pubsub.subscribe(self._own, *initial)
                self._pubsub = pubsub
                # Subscriptions that changed while SUBSCRIBE was on its way.
                if added := self._channels - initial:
                    await pubsub.subscribe(*added)
                if removed := initial - self._channels:
                    await pubsub.unsubscribe(*removed)
                # Redis answers in order: the PONG proves every SUBSCRIBE above took effect.
                await pubsub.ping(b"ready")
                await self._read(pubsub, until_pong=True)
                self._connecting = False
                self._ready.set()
                if ever_connected or failures:
                    log.warning("broker reconnected after %d failed attempts; resyncing", failures)
                    self._start_resync()
                ever_connected = True
                failures = 0
                await self._read(pubsub, until_pong=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure means: reconnect
                if failures == 0:
                    log.warning("broker connection lost: %r", exc)
            finally:
                self._connecting = False
                self._ready.clear()
                self._pubsub = None
                self._release_confirms()
                await _close(pubsub)
            failures += 1
            delay = min(self._backoff_max, self._backoff_min * 2 ** min(failures - 1, 10))
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _read(self, pubsub: PubSub, *, until_pong: bool) -> None:
        loop = asyncio.get_running_loop()
        on_message = self._on_message
        assert on_message is not None
        last_heard = loop.time()
        while True:
            msg: dict[str, Any] | None = await pubsub.get_message(timeout=self._ping_interval)
            now = loop.time()
            if msg is None:
                if now - last_heard > self._dead_after:
                    raise ConnectionError(f"no reply from Redis for {self._dead_after} s")
                await pubsub.ping()
                continue
            last_heard = now
            kind = msg["type"]
            if kind == "message":
                on_message(msg["channel"].decode(), msg["data"])
            elif kind == "subscribe":
                confirm = self._confirms.pop(msg["channel"].decode(), None)
                if confirm is not None and not confirm.done():
                    confirm.set_result(None)
            elif kind == "pong" and until_pong and msg["data"] == b"ready":
                return

    def _release_confirms(self) -> None:
        for confirm in self._confirms.values():
            if not confirm.done():
                confirm.set_result(None)
        self._confirms.clear()

    def _start_resync(self) -> None:
        if self._on_reconnect is None:
            return
        task = asyncio.create_task(self._on_reconnect(), name="broker-on-reconnect")
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call]
