"""Redis Cluster broker: sharded pub/sub (SPUBLISH / SSUBSCRIBE), so fan-out grows with shards.

Classic PUBLISH in a cluster is broadcast to every node; a shard channel lives on its hash
slot's master only, so each master carries the traffic of its own accounts. Publishing goes
through redis-py's cluster client, which routes by slot and follows MOVED/ASK. Subscribing
is one connection per master (subscriber.py), each read by its own loop. redis-py's
ClusterPubSub is not used: it polls its per-node connections in turn (a frame waits out the
others' read timeouts) and reconnects silently, where we must know which channels may have
missed messages.

Healing: when a master's connection fails, or the master drops a channel (its slot moved),
the slot map is read again; channels whose slot now lives elsewhere move to that master's
subscriber, and every channel that may have missed messages is reported to the hub
(`on_reconnect`), which resyncs those accounts' sockets from PostgreSQL. A master that only
restarted keeps its channels: its subscriber reconnects and reports them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.push.broker.base import OnMessage, OnReconnect, Unpublished
from server.push.broker.subscriber import (
    DEFAULT_TIMING,
    FAILURES,
    SHUTDOWN_STEP,
    Subscriber,
    Timing,
)

log = logging.getLogger("balance.broker")

SCHEME = "redis+cluster"


def seeds(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """`redis+cluster://[user:password@]host:port[,host:port…]` → (hosts, username, password)."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ValueError(f"not a {SCHEME}:// URL")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    found = []
    for item in filter(None, hosts.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"REDIS_URL: {item!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    if not found:
        raise ValueError(f"REDIS_URL: {SCHEME}:// names no host:port")
    return found, unquote(username) or None, unquote(password) or None


class ClusterBroker:
    """Pub/sub over a Redis Cluster's shard channels; follows failovers and slot moves."""

    def __init__(self, url: str, timing: Timing = DEFAULT_TIMING) -> None:
        hosts, self._username, self._password = seeds(url)
        # One retry: a failover or slot move is met by reloading the slot map once.
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            username=self._username,
            password=self._password,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 1),
        )
        self._timing = timing
        self._wanted: set[str] = set()
        self._home: dict[str, str] = {}  # channel -> the master (node name) subscribed to it
        self._shards: dict[str, Subscriber] = {}  # master node name -> its subscriber
        self._mapped = False  # the slot map has been read once
        self._healing: asyncio.Task[None] | None = None
        self._heal_again = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_message: OnMessage | None = None
        self._on_reconnect: OnReconnect | None = None

    @property
    def connected(self) -> bool:
        """The slot map is known and every master's subscriber is up (a cluster with a
        master down refuses commands anyway, unless configured not to)."""
        shards = self._shards
        return self._mapped and bool(shards) and all(s.ready.is_set() for s in shards.values())

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._heal()
        # Give the first connections a moment so early sockets need no resync; never fail.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while not self.connected:  # noqa: ASYNC110 - many events, one condition
                    await asyncio.sleep(0.02)

    async def disconnect(self) -> None:
        # Every step is bounded: a shutdown must finish even if redis-py is stuck.
        pending = {t for t in (self._healing, *self._tasks) if t is not None}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_STEP)
        await asyncio.gather(*(s.stop() for s in self._shards.values()))
        self._shards.clear()
        with contextlib.suppress(*FAILURES):
            await asyncio.wait_for(self._cluster.aclose(), SHUTDOWN_STEP)

    async def subscribe(self, channel: str) -> None:
        self._wanted.add(channel)
        if not self._mapped:
            return  # placed when the slot map is read, and reported then
        home = self._route(channel)
        shard = self._shards.get(home) if home is not None else None
        if home is None or shard is None:
            self._heal()  # the slot map changed under us: placed and reported by the heal
            return
        self._home[channel] = home
        await shard.add((channel,))

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        home = self._home.pop(channel, None)
        shard = self._shards.get(home) if home is not None else None
        if shard is not None:
            await shard.discard((channel,))

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        # Messages for a master known to be down fail fast; the others go out.
        up: list[tuple[str, bytes]] = []
        down: list[tuple[str, bytes]] = []
        for message in messages:
            shard = self._shards.get(self._route(message[0]) or "")
            (up if shard is not None and shard.ready.is_set() else down).append(message)
        if len(up) == 1:
            await self._cluster.spublish(*up[0])
        elif up:
            # Non-transactional: redis-py splits it by master and sends the parts concurrently.
            async with self._cluster.pipeline() as pipe:
                for channel, data in up:
                    pipe.spublish(channel, data)
                await pipe.execute()
        if down:
            raise Unpublished(down)

    # ------------------------------------------------------------ healing

    def _route(self, channel: str) -> str | None:
        """The master that owns the channel's slot, by the slot map we hold."""
        with contextlib.suppress(*FAILURES):
            node = self._cluster.get_node_from_key(channel)
            return node.name if node is not None else None
        return None

    def _heal(self) -> None:
        """Read the slot map again and re-home channels; one run at a time, one more if
        asked meanwhile."""
        if self._healing is not None:
            self._heal_again = True
            return

        async def run() -> None:
            try:
                while True:
                    self._heal_again = False
                    await self._rehome()
                    if not self._heal_again:
                        return
            finally:
                self._healing = None

        self._healing = asyncio.create_task(run(), name="cluster-broker-heal")

    async def _rehome(self) -> None:
        failures = 0
        while True:
            try:
                if self._mapped:
                    await self._cluster.nodes_manager.initialize()
                else:
                    await self._cluster.initialize()
                break
            except FAILURES as exc:
                if failures == 0:
                    log.warning("cannot read the cluster's slot map: %r", exc)
                failures += 1
                t = self._timing
                delay = min(t.backoff_max, t.backoff_min * 2 ** min(failures - 1, 10))
                await asyncio.sleep(random.uniform(delay / 2, delay))
        primaries = {node.name: node for node in self._cluster.get_primaries()}
        # Masters that are gone (failed over, removed): their subscribers stop.
        for name in [n for n in self._shards if n not in primaries]:
            log.warning("cluster master %s is gone; moving its channels", name)
            await self._shards.pop(name).stop()
        for name, node in primaries.items():
            if name not in self._shards:
                self._start_shard(name, node)
        self._mapped = True
        # Every channel to the master of its slot now.
        leaving: defaultdict[str, list[str]] = defaultdict(list)
        arriving: defaultdict[str, list[str]] = defaultdict(list)
        for channel in self._wanted:
            home, now = self._home.get(channel), self._route(channel)
            if now is not None and now != home:
                if home is not None and home in self._shards:
                    leaving[home].append(channel)
                arriving[now].append(channel)
                self._home[channel] = now
        for name, channels in leaving.items():
            await self._shards[name].discard(channels)
        moved: list[str] = []
        for name, channels in arriving.items():
            shard = self._shards.get(name)
            channels = [c for c in channels if c in self._wanted]  # (unsubscribed meanwhile)
            # Confirmed on a live master: report them now. Otherwise that master's
            # subscriber reports them when it (re)connects.
            if shard is not None and await shard.add(channels):
                moved.extend(channels)
        if moved:
            self._report(frozenset(moved))

    def _start_shard(self, name: str, node: ClusterNode) -> None:
        client = Redis(
            host=node.host,
            port=int(node.port),
            username=self._username,
            password=self._password,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),  # a failure must surface in the subscriber's loop
        )
        assert self._on_message is not None
        shard = Subscriber(
            client,
            self._on_message,
            sharded=True,
            on_up=self._report,
            on_down=lambda exc: self._heal(),
            timing=self._timing,
        )
        self._shards[name] = shard
        shard.start(name=f"cluster-broker-subscriber-{name}")

    def _report(self, channels: frozenset[str]) -> None:
        """These channels may have missed messages: the hub resyncs their sockets."""
        if self._on_reconnect is None or not channels:
            return
        task = asyncio.create_task(self._on_reconnect(channels), name="broker-on-reconnect")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
