"""Redis broker (redis-py asyncio + hiredis): PUBLISH to a channel, one SUBSCRIBE per channel.

One publisher connection pool and one subscriber connection per process (subscriber.py):
after the subscriber reconnects, every local socket is resynced from PostgreSQL
(`on_reconnect`), since messages published while we were away are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.push.broker.base import OnMessage, OnReconnect
from server.push.broker.subscriber import (
    DEFAULT_TIMING,
    FAILURES,
    SHUTDOWN_STEP,
    Subscriber,
    Timing,
)


class RedisBroker:
    """Pub/sub over one Redis; reconnects by itself with jittered exponential backoff."""

    def __init__(self, url: str, timing: Timing = DEFAULT_TIMING) -> None:
        # One retry covers the first command on a pooled connection that died with Redis.
        self._pub: Redis = Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 1),
        )
        # No retries: a failure must surface in the subscriber's loop, not be papered over.
        self._sub_client: Redis = Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 0)
        )
        self._timing = timing
        self._sub: Subscriber | None = None

    @property
    def connected(self) -> bool:
        return self._sub is not None and self._sub.ready.is_set()

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self._sub = Subscriber(
            self._sub_client, on_message, on_up=on_reconnect, timing=self._timing)
        self._sub.start(name="redis-broker-subscriber")
        # Give the first connection a moment so early sockets need no resync; never fail.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sub.ready.wait(), timeout=2.0)

    async def disconnect(self) -> None:
        # Every step is bounded: a shutdown must finish even if redis-py is stuck mid-reconnect.
        if self._sub is not None:
            await self._sub.stop()
        with contextlib.suppress(*FAILURES):
            await asyncio.wait_for(self._pub.aclose(), SHUTDOWN_STEP)

    async def subscribe(self, channel: str) -> None:
        assert self._sub is not None, "connect() first"
        await self._sub.add((channel,))

    async def unsubscribe(self, channel: str) -> None:
        assert self._sub is not None, "connect() first"
        await self._sub.discard((channel,))

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if not self.connected:
            raise ConnectionError("Redis is down")  # fail fast: the publisher remembers them
        if len(messages) == 1:
            channel, data = messages[0]
            await self._pub.publish(channel, data)
            return
        async with self._pub.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(channel, data)
            await pipe.execute()
