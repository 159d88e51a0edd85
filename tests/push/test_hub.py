"""The hub (with its publisher) against real PostgreSQL and Redis: one subscription per
account, fan-out, resync. Changes are committed through a ledger whose door feeds the
publisher, as in the server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from server.config import Settings
from server.dev import servers as devservers
from server.errors import CLOSE_SERVICE_RESTART, CloseCode
from server.ledger import Ledger
from server.messages import BalanceFrame
from server.push.broker import Broker, make_broker
from server.push.broker.redis import RedisBroker
from server.push.broker.subscriber import Timing
from server.push.frame import Frame
from server.push.hub import Hub, HubClosed, TooManySockets
from server.push.publisher import Publisher
from server.push.snapshots import Snapshot


class Sink:
    """A socket as the hub sees it, recording what it is given."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed: CloseCode | None = None

    def deliver(self, frame: Frame, *, force: bool = False) -> bool:
        self.frames.append(frame)
        return True

    def close(self, code: CloseCode) -> None:
        self.closed = code

    @property
    def versions(self) -> list[int]:
        return [f.version for f in self.frames]


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def account() -> str:
    return f"hub-{uuid.uuid4().hex[:12]}"


def settings(migrated: str, prefix: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "ws_max_sockets_per_account": 3,
        "drain_seconds": 0.2,
        "channel_prefix": prefix,
        **overrides,
    }
    return Settings(migrated, ("k" * 16,), "s" * 32, **values)  # type: ignore[arg-type]


@dataclass
class Recorder:
    """A ledger whose door only records: frames to publish by hand."""

    ledger: Ledger
    frames: list[BalanceFrame] = field(default_factory=list)


@pytest.fixture
def ledger(db: asyncpg.Pool) -> Recorder:
    recorder = Recorder(Ledger(db, 0))
    recorder.ledger.on_commit(recorder.frames.append)
    return recorder


@dataclass
class Node:
    """One server instance's push path: a ledger whose door feeds this publisher and hub."""

    hub: Hub
    publisher: Publisher
    ledger: Ledger

    async def stop(self) -> None:
        await self.publisher.stop()
        await self.hub.stop()


async def start_node(
    db: asyncpg.Pool, broker: Broker, settings: Settings, snapshot: Snapshot | None = None,
    **hub_options: float,
) -> Node:
    ledger = Ledger(db, 0)
    hub = Hub(broker, snapshot or ledger.snapshot, settings, **hub_options)
    publisher = Publisher(broker, hub.deliver, settings.channel_prefix, ledger.snapshot)
    ledger.on_commit(publisher.publish)
    await hub.start()
    publisher.start()
    return Node(hub, publisher, ledger)


@pytest.fixture
def prefix() -> str:
    return f"test-hub-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def own_redis() -> Iterator[devservers.RedisServer]:
    with devservers.start_redis() as server:
        yield server


@pytest.fixture
async def nodes(
    migrated: str, db: asyncpg.Pool, redis: devservers.RedisServer, prefix: str
) -> AsyncIterator[tuple[Node, Node]]:
    """Two instances sharing PostgreSQL and Redis."""
    pair = [await start_node(db, make_broker(redis.url), settings(migrated, prefix))
            for _ in range(2)]
    yield pair[0], pair[1]
    for node in pair:
        for account_id, entry in list(node.hub._accounts.items()):
            for listener in list(entry.listeners):
                node.hub.unregister(listener, [account_id])
        await node.stop()


async def grant(ledger: Ledger | Recorder, account_id: str, amount: int) -> BalanceFrame | None:
    """Commit a grant through the ledger's door; a Recorder's frame for it."""
    target = ledger.ledger if isinstance(ledger, Recorder) else ledger
    await target.post(
        account_id,
        kind="grant",
        amount=amount,
        reason="test",
        idempotency_key=uuid.uuid4().hex,
        fingerprint=uuid.uuid4().bytes,
    )
    return ledger.frames[-1] if isinstance(ledger, Recorder) else None


async def frame(recorder: Recorder, account_id: str, amount: int) -> BalanceFrame:
    committed = await grant(recorder, account_id, amount)
    assert committed is not None
    return committed


async def numsub(url: str, name: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int((await client.pubsub_numsub(name))[0][1])
    finally:
        await client.aclose()


async def test_snapshot_then_changes_from_either_instance(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    acct, other = account(), account()
    on_a, on_b, elsewhere = Sink(), Sink(), Sink()
    await a.hub.register(on_a, [acct])
    await b.hub.register(on_b, [acct])
    await b.hub.register(elsewhere, [other])
    assert on_a.versions == [0] and on_b.versions == [0]  # the snapshot of a new account

    await grant(a.ledger, acct, 10)  # committed on A: reaches B's socket through Redis
    # Before B commits the next: a frame is the whole state, so B's own version 2 may
    # otherwise reach its socket first and version 1 be dropped as older (correctly).
    await eventually(lambda: on_a.versions[-1] == 1 and on_b.versions[-1] == 1)
    await grant(b.ledger, acct, 5)  # committed on B: reaches A's socket through Redis
    await eventually(lambda: on_a.versions[-1] == 2 and on_b.versions[-1] == 2)
    assert on_a.versions == on_b.versions == [0, 1, 2]
    assert [f.data for f in on_a.frames] == [f.data for f in on_b.frames]
    assert b'"balance":15' in on_b.frames[-1].data
    assert elsewhere.versions == [0]  # another account sees nothing


async def test_one_frame_object_for_every_local_socket(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    acct = account()
    sinks = [Sink() for _ in range(3)]
    for sink in sinks:
        await b.hub.register(sink, [acct])
    await grant(a.ledger, acct, 7)
    await eventually(lambda: all(s.versions[-1] == 1 for s in sinks))
    first = sinks[0].frames[-1]
    assert all(s.frames[-1] is first for s in sinks)  # encoded once, shared
    assert first.wire.endswith(first.data) and first.wire[0] == 0x81


async def test_one_upstream_subscription_per_account(
    nodes: tuple[Node, Node], redis: devservers.RedisServer, prefix: str
) -> None:
    a = nodes[0].hub
    acct = account()
    name = f"{prefix}:acct:{acct}"
    sinks = [Sink() for _ in range(3)]
    await asyncio.gather(*(a.register(s, [acct]) for s in sinks))
    assert await numsub(redis.url, name) == 1
    for sink in sinks[:2]:
        a.unregister(sink, [acct])
    await asyncio.sleep(0.05)
    assert await numsub(redis.url, name) == 1
    a.unregister(sinks[2], [acct])
    await eventually(lambda: a.socket_count == 0)
    async with asyncio.timeout(2):
        while await numsub(redis.url, name) != 0:  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.02)
    # Back again at once: the unsubscribe in flight must not win over the new subscribe.
    a.unregister(sinks[0], [acct])
    again = Sink()
    await a.register(again, [acct])
    await asyncio.sleep(0.1)
    assert await numsub(redis.url, name) == 1


async def test_sockets_per_account_are_bounded(nodes: tuple[Node, Node]) -> None:
    a = nodes[0].hub
    acct = account()
    for _ in range(3):
        await a.register(Sink(), [acct])
    with pytest.raises(TooManySockets):
        await a.register(Sink(), [acct])
    await a.register(Sink(), [account()])  # other accounts are unaffected


async def test_stale_and_duplicate_frames_stop_at_the_hub(
    nodes: tuple[Node, Node], ledger: Recorder
) -> None:
    a, b = nodes
    acct = account()
    sink = Sink()
    await b.hub.register(sink, [acct])
    older = await frame(ledger, acct, 1)  # committed, not yet published
    newer = await frame(ledger, acct, 1)
    a.publisher.publish(newer)
    await eventually(lambda: sink.versions[-1] == 2)
    a.publisher.publish(older)
    a.publisher.publish(newer)
    await asyncio.sleep(0.1)
    assert sink.versions == [0, 2]


async def test_memory_broker_delivers_locally(
    migrated: str, db: asyncpg.Pool, prefix: str
) -> None:
    node = await start_node(db, make_broker(None), settings(migrated, prefix))
    try:
        acct = account()
        sink = Sink()
        await node.hub.register(sink, [acct])
        await grant(node.ledger, acct, 3)
        assert sink.versions == [0, 1]  # delivered before the commit call returned
        await eventually(lambda: node.hub.lag() < 1.0)
        assert node.hub.ready()
    finally:
        await node.stop()


async def test_canary_and_resync_across_a_redis_outage(
    migrated: str, db: asyncpg.Pool, own_redis: devservers.RedisServer, prefix: str
) -> None:
    node = await start_node(
        db, RedisBroker(own_redis.url, Timing(ping_interval=0.2, dead_after=1.0)),
        settings(migrated, prefix), canary_interval=0.2,
    )
    hub = node.hub
    try:
        acct = account()
        sink = Sink()
        await hub.register(sink, [acct])
        await eventually(lambda: hub.lag() < 0.5)
        assert hub.ready()

        own_redis.stop()
        failures = sample("balance_publish_failures_total")
        await eventually(lambda: not hub.broker.connected)
        await grant(node.ledger, acct, 9)  # committed while Redis is down
        await eventually(lambda: sample("balance_publish_failures_total") > failures)
        await eventually(lambda: hub.lag() > 0.6)
        assert not hub.ready()
        assert sample("pubsub_lag_seconds") > 0.5  # the gauge reads hub.lag()

        # Changed in PostgreSQL while Redis is down, never published at all:
        await grant(Ledger(db, 0), acct, 1)
        own_redis.start()
        await eventually(lambda: sink.versions[-1] == 2)  # resynced from PostgreSQL
        assert b'"balance":10' in sink.frames[-1].data
        await eventually(lambda: hub.lag() < 0.5)
        assert hub.ready()
    finally:
        await node.stop()


async def test_stop_drains_with_service_restart(
    migrated: str, db: asyncpg.Pool, prefix: str
) -> None:
    node = await start_node(db, make_broker(None), settings(migrated, prefix))
    hub = node.hub
    sinks = [Sink() for _ in range(5)]
    for sink in sinks:
        await hub.register(sink, [account()])

    async def unregister_when_closed() -> None:
        while any(s.closed is None for s in sinks):  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)
        for sink in sinks:
            hub.unregister(sink, list(hub._accounts))

    closer = asyncio.create_task(unregister_when_closed())
    await node.stop()
    await closer
    assert {s.closed for s in sinks} == {CLOSE_SERVICE_RESTART}
    with pytest.raises(HubClosed):
        await hub.register(Sink(), [account()])


async def test_concurrent_snapshots_share_one_query(
    migrated: str, db: asyncpg.Pool, prefix: str
) -> None:
    calls: list[int] = []
    plain = Ledger(db, 0)

    async def counted(account_ids: Sequence[str]) -> list[BalanceFrame]:
        calls.append(len(account_ids))
        return await plain.snapshot(account_ids)

    node = await start_node(db, make_broker(None), settings(migrated, prefix), counted)
    hub = node.hub
    try:
        accounts = [account() for _ in range(50)]
        sinks = [Sink() for _ in accounts]
        await asyncio.gather(*(hub.register(s, [a]) for s, a in zip(sinks, accounts, strict=True)))
        assert all(s.versions == [0] for s in sinks)
        assert sum(calls) == 50 and len(calls) <= 3
        for sink, acct in zip(sinks, accounts, strict=True):
            hub.unregister(sink, [acct])
    finally:
        await node.stop()
