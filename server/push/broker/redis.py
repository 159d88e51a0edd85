"""Redis broker (redis-py asyncio + hiredis): PUBLISH to a channel, one SUBSCRIBE per channel.

One publishing connection and one subscriber connection per process (subscriber.py):
after the subscriber reconnects, every local socket is resynced from PostgreSQL
(`on_reconnect`), since messages published while we were away are gone.

Publishing is on the debit's path (every committed change), so it uses redis-py's
connection directly (`pack_commands`, `send_packed_command`, `read_response`): a client
command or pipeline would also take a connection from a pool and give it back, each with
a lock, a health read of the socket and observability hooks, for every batch of frames;
that cost about a third of a publish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

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
        # The publishing connection, as a pool would make it of the URL (host, TLS,
        # credentials); the pool itself is never used. `publish` retries it once itself.
        pool = ConnectionPool.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self._pub: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        self._publishing = asyncio.Lock()  # one batch's commands and replies at a time
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
            await asyncio.wait_for(self._pub.disconnect(), SHUTDOWN_STEP)

    async def subscribe(self, channel: str) -> None:
        assert self._sub is not None, "connect() first"
        await self._sub.add((channel,))

    async def unsubscribe(self, channel: str) -> None:
        assert self._sub is not None, "connect() first"
        await self._sub.discard((channel,))

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if not self.connected:
            raise ConnectionError("Redis is down")  # fail fast: the publisher remembers them
        conn = self._pub
        packed = conn.pack_commands([("PUBLISH", channel, data) for channel, data in messages])
        async with self._publishing:
            for attempt in (1, 2):
                try:
                    await conn.send_packed_command(packed, check_health=False)
                    for _ in messages:
                        await conn.read_response()
                    return
                except BaseException as exc:
                    # Replies left unread would answer the next batch's commands.
                    await conn.disconnect()
                    # Once more for a connection that died with a Redis since restarted (the
                    # subscriber says it is up): a frame published twice is one frame to a
                    # hub, which keeps the newest version.
                    if attempt == 2 or not isinstance(exc, RedisConnectionError | OSError):
                        raise
