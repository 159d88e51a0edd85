"""Redis Cluster broker: sharded pub/sub (SPUBLISH / SSUBSCRIBE), so fan-out grows with shards.

Classic PUBLISH in a cluster is broadcast to every node; a shard channel lives on its hash
slot's master only, so each master carries the traffic of its own accounts.

We hold the slot map ourselves (CLUSTER SLOTS, read again whenever a master's connection
fails or a master drops a channel) and talk to each master with a plain client: one
connection pool for SPUBLISH pipelines and one subscriber connection (subscriber.py), read by
its own loop. redis-py's cluster clients are not used. Its ClusterPubSub polls its per-node
connections in turn (a frame waits out the others' read timeouts) and reconnects silently,
where we must know which channels may have missed messages. Its RedisCluster recovers from
a dead master by closing every node's connections and rereading the map, which made the
publishes to the healthy masters fail with it. With a plain client per master, a master
that is down costs exactly its own channels.

Healing: channels whose slot now lives on another master move to that master's subscriber,
and every channel that may have missed messages is reported to the hub (`on_reconnect`),
which resyncs those accounts' sockets from PostgreSQL. Publishes to a master that is down
fail at once as `Unpublished`, and the publisher republishes those accounts' state later. A
master that only restarted keeps its channels: its subscriber reconnects and reports them
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

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

Address = tuple[str, int]

MAP_REFRESH = 5.0  # seconds between slot-map reads when nothing failed (a missed change heals)
LOST_RECHECK = 0.5  # a master dropped a channel: read the map again this much later too
HEAL_GAP = 0.25  # the least time between two map reads asked for back to back


def seeds(url: str) -> tuple[list[Address], str | None, str | None]:
    """`redis+cluster://[user:password@]host:port[,host:port…]` → (hosts, username, password).

    Parsed by hand: a list of hosts is not one netloc, and urllib's check of bracketed IPv6
    hosts (in Debian's 3.11 and every CPython since 3.11.4) refuses `h1:7000,[::1]:7001`.
    """
    scheme, sep, rest = url.partition("://")
    if scheme != SCHEME or not sep:
        raise ValueError(f"not a {SCHEME}:// URL")
    # RFC 3986: the authority ends at the first '/', '?' or '#' (a password holding one is
    # percent-encoded); in it, the last '@' ends the credentials.
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    credentials, _, hosts = authority.rpartition("@")
    username, _, password = credentials.partition(":")
    found = [_address(item.strip()) for item in hosts.split(",") if item.strip()]
    if not found:
        raise ValueError(f"REDIS_URL: {SCHEME}:// names no host:port")
    return found, unquote(username) or None, unquote(password) or None


def _address(item: str) -> Address:
    """`host:port`, `1.2.3.4:port` or `[v6]:port`."""
    if item.startswith("["):
        host, sep, port = item[1:].partition("]:")
        valid = bool(sep) and _is_ipv6(host)
    else:
        host, sep, port = item.rpartition(":")
        valid = bool(sep and host) and ":" not in host  # a bare IPv6 needs its brackets
    if not valid or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"REDIS_URL: {item!r} is not host:port (an IPv6 host: [::1]:7000)")
    return host, int(port)


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


class ClusterBroker:
    """Pub/sub over a Redis Cluster's shard channels; follows failovers and slot moves."""

    def __init__(self, url: str, timing: Timing = DEFAULT_TIMING) -> None:
        self._seeds, self._username, self._password = seeds(url)
        self._timing = timing
        self._wanted: set[str] = set()
        self._home: dict[str, str] = {}  # channel -> the master (host:port) subscribed to it
        self._slots: list[str] = []  # slot -> its master's host:port; empty until read
        self._masters: dict[str, Address] = {}
        self._shards: dict[str, Subscriber] = {}  # master -> its subscriber
        self._pubs: dict[str, Redis] = {}  # master -> its client for SPUBLISH
        self._closing = False  # disconnect() began: no heal, shard or report starts after it
        self._healing: asyncio.Task[None] | None = None
        self._heal_again = False
        self._watch: asyncio.Task[None] | None = None
        self._on_message: OnMessage | None = None
        self._on_reconnect: OnReconnect | None = None

    @property
    def connected(self) -> bool:
        """The slot map is known and every master's subscriber is up (a cluster with a
        master down refuses keyed commands anyway, unless configured not to)."""
        shards = self._shards
        return bool(self._slots) and bool(shards) and all(
            s.ready.is_set() for s in shards.values())

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._heal()
        self._watch = asyncio.create_task(self._refresh(), name="cluster-broker-map")
        # Give the first connections a moment so early sockets need no resync; never fail.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while not self.connected:  # noqa: ASYNC110 - many events, one condition
                    await asyncio.sleep(0.02)

    async def disconnect(self) -> None:
        # Every step is bounded: a shutdown must finish even if a node is stuck.
        self._closing = True
        pending = {t for t in (self._healing, self._watch) if t is not None}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_STEP)
        await asyncio.gather(*(s.stop() for s in self._shards.values()))
        self._shards.clear()
        for client in self._pubs.values():
            with contextlib.suppress(*FAILURES):
                await asyncio.wait_for(client.aclose(), SHUTDOWN_STEP)
        self._pubs.clear()

    async def subscribe(self, channel: str) -> None:
        self._wanted.add(channel)
        if not self._slots:
            return  # placed when the slot map is read, and reported then
        home = self._route(channel)
        shard = self._shards.get(home)
        if shard is None:
            self._heal()  # the map names a master we have no subscriber for yet
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
        """SPUBLISH each message on its slot's master, the masters concurrently; what could
        not reach its master (down, unreachable, or the slot moved) raises `Unpublished`."""
        by_master: defaultdict[str, list[tuple[str, bytes]]] = defaultdict(list)
        down: list[tuple[str, bytes]] = []
        for message in messages:
            home = self._route(message[0]) if self._slots else ""
            shard = self._shards.get(home)
            if shard is not None and shard.ready.is_set():
                by_master[home].append(message)
            else:
                down.append(message)  # fail fast: the publisher republishes them later
        if by_master:
            failed = await asyncio.gather(
                *(self._publish_on(home, batch) for home, batch in by_master.items()))
            for batch in failed:
                down.extend(batch)
        if down:
            raise Unpublished(down)

    async def _publish_on(
        self, home: str, batch: list[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        """Publish on one master; the messages that did not get there."""
        try:
            async with self._pubs[home].pipeline(transaction=False) as pipe:
                for channel, data in batch:
                    pipe.spublish(channel, data)
                replies = await pipe.execute(raise_on_error=False)
        except FAILURES:
            return batch
        lost = [m for m, r in zip(batch, replies, strict=True) if isinstance(r, Exception)]
        if lost:  # MOVED (a slot moved) or CLUSTERDOWN: read the map again
            self._heal()
        return lost

    # ------------------------------------------------------------ healing

    def _route(self, channel: str) -> str:
        """The master that owns the channel's slot, by the slot map we hold."""
        return self._slots[key_slot(channel.encode())]

    async def _refresh(self) -> None:
        """Read the slot map now and then even when nothing failed. A node's view can lag
        the cluster's by a gossip round, and a channel left on a demoted master's
        connection still gets messages (replicas serve shard channels), so no failure
        would ever tell us."""
        while True:
            await asyncio.sleep(MAP_REFRESH)
            self._heal()

    def _dropped(self, name: str, channels: frozenset[str]) -> None:
        """A master dropped these channels (their slot moved, or it was demoted): place them
        again by a fresh map. Now, and a moment later, since the move may not have reached
        the node we read the map from yet."""
        for channel in channels:
            if self._home.get(channel) == name:
                del self._home[channel]
        self._heal()
        asyncio.get_running_loop().call_later(LOST_RECHECK, self._heal)

    def _heal(self) -> None:
        """Read the slot map again and re-home channels; one run at a time, one more if
        asked meanwhile."""
        if self._closing:
            return
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
                    await asyncio.sleep(HEAL_GAP)  # a lasting MOVED must not spin map reads
            finally:
                self._healing = None

        self._healing = asyncio.create_task(run(), name="cluster-broker-heal")

    async def _read_map(self) -> tuple[list[str], dict[str, Address]] | None:
        """CLUSTER SLOTS from the first node that answers with every slot covered and is in
        a working cluster (`cluster_state:ok`). A node cut off from the others keeps an old
        map, with itself still master of slots a replica took over. Failing that (the whole
        cluster is down), the first full map any node gives."""
        known = [*self._masters.values(), *self._seeds]
        fallback = None
        for host, port in dict.fromkeys(known):
            client = self._client(host, port, socket_timeout=1.0)
            try:
                reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                info = await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            except FAILURES:
                continue
            finally:
                with contextlib.suppress(*FAILURES):
                    await client.aclose()
            found = _slot_map(reply, host)
            if found is None:
                continue
            if b"cluster_state:ok" in bytes(info).splitlines():
                return found
            fallback = fallback or found
        return fallback

    async def _rehome(self) -> None:
        failures = 0
        while (found := await self._read_map()) is None:
            if failures == 0:
                log.warning("cannot read the cluster's slot map from any node")
            failures += 1
            await asyncio.sleep(self._timing.backoff(failures))
        if self._closing:
            return
        if found == (self._slots, self._masters) and len(self._home) == len(self._wanted):
            return  # (a master that only restarted: its subscriber resubscribes by itself)
        self._slots, self._masters = found
        # Masters that are gone (failed over, removed): their subscribers stop.
        for name in [n for n in self._shards if n not in self._masters]:
            log.warning("cluster master %s is gone; moving its channels", name)
            await self._shards.pop(name).stop()
            with contextlib.suppress(*FAILURES):
                await self._pubs.pop(name).aclose()
        for name, (host, port) in self._masters.items():
            if name not in self._shards:
                self._start_shard(name, host, port)
        # Every channel to the master of its slot now.
        leaving: defaultdict[str, list[str]] = defaultdict(list)
        arriving: defaultdict[str, list[str]] = defaultdict(list)
        for channel in self._wanted:
            home, now = self._home.get(channel), self._route(channel)
            if now != home:
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

    def _client(self, host: str, port: int, *, socket_timeout: float, retries: int = 0) -> Redis:
        # A failure must surface in our code (the subscriber's loop, Unpublished), not be
        # papered over by retries; and never a retry after a timeout (a hung master would
        # hold every shard's publishes twice as long).
        return Redis(
            host=host,
            port=port,
            username=self._username,
            password=self._password,
            socket_connect_timeout=1.0,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
        )

    def _start_shard(self, name: str, host: str, port: int) -> None:
        assert self._on_message is not None
        # One retry covers the first command on a pooled connection that died with a
        # restarted master (publishes go only to masters whose subscriber is up).
        self._pubs[name] = self._client(host, port, socket_timeout=1.0, retries=1)
        shard = Subscriber(
            self._client(host, port, socket_timeout=5.0),
            self._on_message,
            sharded=True,
            on_up=self._report,
            # Every failed attempt reads the slot map again (at most once a second, with the
            # backoff): that is how a replica promoted in the dead master's place is found.
            on_down=lambda exc: self._heal(),
            on_lost=lambda channels: self._dropped(name, channels),
            timing=self._timing,
        )
        self._shards[name] = shard
        shard.start(name=f"cluster-broker-subscriber-{name}")

    def _report(self, channels: frozenset[str]) -> None:
        """These channels may have missed messages: the hub resyncs their sockets."""
        if self._on_reconnect is not None and channels and not self._closing:
            self._on_reconnect(channels)


def _slot_map(reply: list[Any], host: str) -> tuple[list[str], dict[str, Address]] | None:
    """CLUSTER SLOTS as slot -> master name, and the masters; None unless every slot is
    covered. `host` is the node asked: an empty, null or "?" endpoint means that one."""
    slots: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    masters: dict[str, Address] = {}
    for start, end, primary, *_ in reply:
        ip = primary[0]
        address = (ip.decode() if ip and ip != b"?" else host, int(primary[1]))
        name = f"{address[0]}:{address[1]}"
        masters[name] = address
        slots[int(start) : int(end) + 1] = [name] * (int(end) - int(start) + 1)
    if not all(slots):
        return None
    return [name or "" for name in slots], masters
