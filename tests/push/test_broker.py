"""The brokers against a real Redis: interest-only delivery, one subscription, reconnects."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from server.dev import servers as devservers
from server.push.broker import MemoryBroker, make_broker
from server.push.broker.base import Broker
from server.push.broker.redis import RedisBroker


class Inbox:
    """Collects what a broker delivers, and counts reconnects."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.reconnects = 0
        self.changed = asyncio.Event()

    def on_message(self, channel: str, data: bytes) -> None:
        self.messages.append((channel, data))
        self.changed.set()

    async def on_reconnect(self) -> None:
        self.reconnects += 1
        self.changed.set()

    async def wait_for(self, predicate: object, within: float = 5.0) -> None:
        assert callable(predicate)
        async with asyncio.timeout(within):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def channel() -> str:
    return f"test-broker:{uuid.uuid4().hex}"


@pytest.fixture
def own_redis() -> Iterator[devservers.RedisServer]:
    """A Redis of this test's own, which it may stop and start."""
    with devservers.start_redis() as server:
        yield server


@pytest.fixture
async def connected(redis: devservers.RedisServer) -> AsyncIterator[tuple[Broker, Inbox]]:
    broker = make_broker(redis.url)
    inbox = Inbox()
    await broker.connect(inbox.on_message, inbox.on_reconnect)
    yield broker, inbox
    await broker.disconnect()


async def numsub(url: str, name: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        counts = await client.pubsub_numsub(name)
        return int(counts[0][1])
    finally:
        await client.aclose()


def test_make_broker_picks_by_scheme() -> None:
    assert isinstance(make_broker(None), MemoryBroker)
    assert isinstance(make_broker(""), MemoryBroker)
    assert isinstance(make_broker("memory://"), MemoryBroker)
    assert isinstance(make_broker("redis://127.0.0.1:1/0"), RedisBroker)
    with pytest.raises(ValueError, match="REDIS_URL"):
        make_broker("http://127.0.0.1:6379")


async def test_memory_broker_delivers_only_what_is_subscribed() -> None:
    broker = MemoryBroker()
    inbox = Inbox()
    await broker.connect(inbox.on_message, inbox.on_reconnect)
    await broker.subscribe("a")
    await broker.publish([("a", b"1"), ("b", b"2"), ("a", b"3")])
    assert inbox.messages == [("a", b"1"), ("a", b"3")]
    await broker.unsubscribe("a")
    await broker.publish([("a", b"4")])
    assert len(inbox.messages) == 2
    await broker.disconnect()
    with pytest.raises(ConnectionError):
        await broker.publish([("a", b"5")])


async def test_redis_delivers_between_brokers_by_interest(
    redis: devservers.RedisServer, connected: tuple[Broker, Inbox]
) -> None:
    subscriber, inbox = connected
    publisher = make_broker(redis.url)
    await publisher.connect(Inbox().on_message, Inbox().on_reconnect)
    wanted, other = channel(), channel()
    try:
        await subscriber.subscribe(wanted)
        await publisher.publish([(wanted, b"one")])
        await publisher.publish([(other, b"not for us"), (wanted, b"two"), (wanted, b"three")])
        await inbox.wait_for(lambda: len(inbox.messages) >= 3)
        assert inbox.messages == [(wanted, b"one"), (wanted, b"two"), (wanted, b"three")]
        assert await numsub(redis.url, wanted) == 1
        await subscriber.unsubscribe(wanted)
        await publisher.publish([(wanted, b"after")])
        await asyncio.sleep(0.2)
        assert len(inbox.messages) == 3
        assert await numsub(redis.url, wanted) == 0
    finally:
        await publisher.disconnect()


async def test_subscribe_returns_once_redis_confirmed(
    redis: devservers.RedisServer, connected: tuple[Broker, Inbox]
) -> None:
    broker, _ = connected
    names = [channel() for _ in range(50)]
    await asyncio.gather(*(broker.subscribe(n) for n in names))
    client = aioredis.Redis.from_url(redis.url)
    try:
        counts = dict(await client.pubsub_numsub(*names))
    finally:
        await client.aclose()
    assert set(counts.values()) == {1}


async def test_reconnects_resubscribes_and_calls_back(own_redis: devservers.RedisServer) -> None:
    broker = RedisBroker(own_redis.url, ping_interval=0.2, dead_after=1.0)
    inbox = Inbox()
    await broker.connect(inbox.on_message, inbox.on_reconnect)
    name = channel()
    try:
        await broker.subscribe(name)
        assert broker.connected
        own_redis.stop()
        async with asyncio.timeout(5):
            while broker.connected:  # noqa: ASYNC110 - polling state that has no event
                await asyncio.sleep(0.02)
        with pytest.raises(Exception):  # noqa: B017 - any redis-py connection error
            await broker.publish([(name, b"lost")])
        own_redis.start()
        await inbox.wait_for(lambda: inbox.reconnects == 1 and broker.connected)
        await broker.publish([(name, b"back")])
        await inbox.wait_for(lambda: inbox.messages == [(name, b"back")])
        assert await numsub(own_redis.url, name) == 1
    finally:
        await broker.disconnect()


async def test_starts_while_redis_is_down(own_redis: devservers.RedisServer) -> None:
    own_redis.stop()
    broker = RedisBroker(own_redis.url)
    inbox = Inbox()
    async with asyncio.timeout(4):
        await broker.connect(inbox.on_message, inbox.on_reconnect)  # must not raise
    name = channel()
    try:
        assert not broker.connected
        await broker.subscribe(name)  # remembered, sent once Redis is there
        own_redis.start()
        await inbox.wait_for(lambda: inbox.reconnects == 1 and broker.connected)
        await broker.publish([(name, b"hello")])
        await inbox.wait_for(lambda: inbox.messages == [(name, b"hello")])
    finally:
        await broker.disconnect()
