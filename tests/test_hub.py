"""The hub against real PostgreSQL and Redis: one subscription per account, fan-out, resync."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from server import devservers
from server.broker import make_broker
from server.broker.redis import RedisBroker
from server.config import Settings
from server.errors import CLOSE_SERVICE_RESTART, CloseCode
from server.hub import Frame, Hub, HubClosed, TooManySockets
from server.ledger import Ledger
from server.messages import BalanceFrame


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


@pytest.fixture
def ledger(db: asyncpg.Pool) -> Ledger:
    return Ledger(db, 0)


@pytest.fixture
def prefix() -> str:
    return f"test-hub-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def own_redis() -> Iterator[devservers.RedisServer]:
    with devservers.start_redis() as server:
        yield server


@pytest.fixture
async def hubs(
    migrated: str, redis: devservers.RedisServer, ledger: Ledger, prefix: str
) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two hubs, as on two server instances, sharing PostgreSQL and Redis."""
    pair = []
    for _ in range(2):
        hub = Hub(make_broker(redis.url), ledger.snapshot, settings(migrated, prefix))
        await hub.start()
        pair.append(hub)
    yield pair[0], pair[1]
    for hub in pair:
        for account_id, entry in list(hub._accounts.items()):
            for listener in list(entry.listeners):
                hub.unregister(listener, [account_id])
        await hub.stop()


async def grant(ledger: Ledger, account_id: str, amount: int) -> BalanceFrame:
    outcome = await ledger.post(
        account_id,
        kind="grant",
        amount=amount,
        reason="test",
        idempotency_key=uuid.uuid4().hex,
        fingerprint=uuid.uuid4().bytes,
    )
    assert outcome.frame is not None
    return outcome.frame


async def numsub(url: str, name: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int((await client.pubsub_numsub(name))[0][1])
    finally:
        await client.aclose()


async def test_snapshot_then_changes_from_either_instance(
    hubs: tuple[Hub, Hub], ledger: Ledger
) -> None:
    a, b = hubs
    acct, other = account(), account()
    on_a, on_b, elsewhere = Sink(), Sink(), Sink()
    await a.register(on_a, [acct])
    await b.register(on_b, [acct])
    await b.register(elsewhere, [other])
    assert on_a.versions == [0] and on_b.versions == [0]  # the snapshot of a new account

    a.publish(await grant(ledger, acct, 10))  # committed on A
    b.publish(await grant(ledger, acct, 5))  # committed on B
    await eventually(lambda: on_a.versions[-1] == 2 and on_b.versions[-1] == 2)
    assert on_a.versions == on_b.versions == [0, 1, 2]
    assert [f.data for f in on_a.frames] == [f.data for f in on_b.frames]
    assert b'"balance":15' in on_b.frames[-1].data
    assert elsewhere.versions == [0]  # another account sees nothing


async def test_one_frame_object_for_every_local_socket(
    hubs: tuple[Hub, Hub], ledger: Ledger
) -> None:
    a, b = hubs
    acct = account()
    sinks = [Sink() for _ in range(3)]
    for sink in sinks:
        await b.register(sink, [acct])
    a.publish(await grant(ledger, acct, 7))
    await eventually(lambda: all(s.versions[-1] == 1 for s in sinks))
    first = sinks[0].frames[-1]
    assert all(s.frames[-1] is first for s in sinks)  # encoded once, shared
    assert first.wire.endswith(first.data) and first.wire[0] == 0x81


async def test_one_upstream_subscription_per_account(
    hubs: tuple[Hub, Hub], redis: devservers.RedisServer, prefix: str
) -> None:
    a, _ = hubs
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


async def test_sockets_per_account_are_bounded(hubs: tuple[Hub, Hub]) -> None:
    a, _ = hubs
    acct = account()
    for _ in range(3):
        await a.register(Sink(), [acct])
    with pytest.raises(TooManySockets):
        await a.register(Sink(), [acct])
    await a.register(Sink(), [account()])  # other accounts are unaffected


async def test_stale_and_duplicate_frames_stop_at_the_hub(
    hubs: tuple[Hub, Hub], ledger: Ledger
) -> None:
    a, b = hubs
    acct = account()
    sink = Sink()
    await b.register(sink, [acct])
    older = await grant(ledger, acct, 1)
    newer = await grant(ledger, acct, 1)
    a.publish(newer)
    await eventually(lambda: sink.versions[-1] == 2)
    a.publish(older)
    a.publish(newer)
    await asyncio.sleep(0.1)
    assert sink.versions == [0, 2]


async def test_memory_broker_delivers_locally(migrated: str, ledger: Ledger, prefix: str) -> None:
    hub = Hub(make_broker(None), ledger.snapshot, settings(migrated, prefix))
    await hub.start()
    try:
        acct = account()
        sink = Sink()
        await hub.register(sink, [acct])
        hub.publish(await grant(ledger, acct, 3))
        assert sink.versions == [0, 1]
        await eventually(lambda: hub.lag() < 1.0)
        assert await hub.ready()
    finally:
        await hub.stop()


async def test_canary_and_resync_across_a_redis_outage(
    migrated: str, own_redis: devservers.RedisServer, ledger: Ledger, prefix: str
) -> None:
    hub = Hub(
        RedisBroker(own_redis.url, ping_interval=0.2, dead_after=1.0),
        ledger.snapshot,
        settings(migrated, prefix),
        canary_interval=0.2,
    )
    await hub.start()
    try:
        acct = account()
        sink = Sink()
        await hub.register(sink, [acct])
        await eventually(lambda: hub.lag() < 0.5)
        assert await hub.ready()

        own_redis.stop()
        failures = sample("balance_publish_failures_total")
        await eventually(lambda: not hub.broker.connected)
        frame = await grant(ledger, acct, 9)  # committed while Redis is down
        hub.publish(frame)
        await eventually(lambda: sample("balance_publish_failures_total") > failures)
        await eventually(lambda: hub.lag() > 0.6)
        assert not await hub.ready()
        assert sample("pubsub_lag_seconds") > 0.5  # the gauge reads hub.lag()

        # Changed in PostgreSQL while Redis is down, never published at all:
        await grant(ledger, acct, 1)
        own_redis.start()
        await eventually(lambda: sink.versions[-1] == 2)  # resynced from PostgreSQL
        assert b'"balance":10' in sink.frames[-1].data
        await eventually(lambda: hub.lag() < 0.5)
        assert await hub.ready()
    finally:
        await hub.stop()


async def test_stop_drains_with_service_restart(migrated: str, ledger: Ledger, prefix: str) -> None:
    hub = Hub(make_broker(None), ledger.snapshot, settings(migrated, prefix))
    await hub.start()
    sinks = [Sink() for _ in range(5)]
    for sink in sinks:
        await hub.register(sink, [account()])

    async def unregister_when_closed() -> None:
        while any(s.closed is None for s in sinks):  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)
        for sink in sinks:
            hub.unregister(sink, list(hub._accounts))

    closer = asyncio.create_task(unregister_when_closed())
    await hub.stop()
    await closer
    assert {s.closed for s in sinks} == {CLOSE_SERVICE_RESTART}
    with pytest.raises(HubClosed):
        await hub.register(Sink(), [account()])


async def test_concurrent_snapshots_share_one_query(
    migrated: str, ledger: Ledger, prefix: str
) -> None:
    calls: list[int] = []

    async def counted(account_ids: Sequence[str]) -> list[BalanceFrame]:
        calls.append(len(account_ids))
        return await ledger.snapshot(account_ids)

    hub = Hub(make_broker(None), counted, settings(migrated, prefix))
    await hub.start()
    try:
        accounts = [account() for _ in range(50)]
        sinks = [Sink() for _ in accounts]
        await asyncio.gather(*(hub.register(s, [a]) for s, a in zip(sinks, accounts, strict=True)))
        assert all(s.versions == [0] for s in sinks)
        assert sum(calls) == 50 and len(calls) <= 3
        for sink, acct in zip(sinks, accounts, strict=True):
            hub.unregister(sink, [acct])
    finally:
        await hub.stop()
