"""Rate limits (API.md "Rate limits"), with the `limits` library.

`BALANCE_RATE_LIMITS` sets them by name, e.g. `me=120/minute;checkout=10/minute;
ws_connect=30/minute;ws_sync=12/minute;service=` (an empty value: no limit). With
REDIS_URL the counters live in Redis (or a Redis Cluster: `limits` puts each counter's keys
in one hash slot), so every instance counts against the same limit;
without it, in this process's memory. A limiter that cannot reach Redis lets requests
through (and says so in the log and a metric): limits protect the service, they must not
stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import limits
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio.cluster import ClusterNode

from server import metrics
from server.push.broker import cluster

log = logging.getLogger("balance.limits")

DEFAULTS = {
    "me": "120/minute",  # /v1/me* per account
    "checkout": "10/minute",  # /v1/me/checkout per account
    "ws_sync": "12/minute",  # sync frames per socket (the JS client sends 2 a minute)
    # Console sign-ins per client address: a browser can reach it, so keys are not guessed
    # at speed (behind a load balancer the address is the balancer's: every operator shares it).
    "console_login": "10/minute",
    # Off unless set: the client address is the TCP peer, which behind a load balancer is
    # the balancer itself (the server reads no forwarded-for header it cannot trust).
    "ws_connect": "",  # WebSocket handshakes per client address
    "service": "",  # per service key
}


class LimitsError(ValueError):
    """BALANCE_RATE_LIMITS does not parse; the message names the part."""


def parse(spec: str) -> dict[str, limits.RateLimitItem | None]:
    """The limits by name: the defaults, overridden by `name=N/period;...`."""
    table = dict(DEFAULTS)
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULTS:
            raise LimitsError(f"BALANCE_RATE_LIMITS: {part!r} is not one of "
                              f"{', '.join(DEFAULTS)} = N/period")
        table[name] = value.strip()
    parsed: dict[str, limits.RateLimitItem | None] = {}
    for name, value in table.items():
        try:
            parsed[name] = limits.parse(value) if value else None
        except ValueError:
            raise LimitsError(f"BALANCE_RATE_LIMITS: {name}={value!r} is not N/period "
                              "(e.g. 30/minute)") from None
    return parsed


class RateLimits:
    """`hit(name, key)`: None when allowed, else the seconds to wait.

    A counter that errs or is slow lets that call through: an outage of Redis must never
    lock every browser out (a reconnect herd would find every handshake refused or hung).
    After an error the store is left alone for `PAUSE` seconds, so a herd meeting a dead
    Redis does not wait out a connect timeout per request; each call let through unchecked
    is counted (balance_rate_limit_unchecked_total) and logged once per `LOG_EVERY`.
    """

    DEADLINE = 1.0  # seconds one check may take before the call is let through
    PAUSE = 2.0  # seconds the store is not asked after it erred
    LOG_EVERY = 60.0
    # Checks in flight to the shared store per process; the rest queue for a slot, at most
    # DEADLINE too. A call that waited too long is let through, but pauses nothing: this
    # process was busy, the store was not failing. redis-py's pools raise rather than wait
    # past their size (so a herd would turn into unchecked calls): they get twice this, as
    # a cancelled check may hand its connection back a moment later.
    IN_FLIGHT = 128

    def __init__(self, spec: str, redis_url: str | None, prefix: str) -> None:
        self._items = parse(spec)
        self._storage = _storage(redis_url, f"{prefix}:limits")
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._in_flight = asyncio.Semaphore(self.IN_FLIGHT)
        self._paused_until = 0.0
        self._logged_at = -math.inf
        self._unlogged = 0

    def limits(self, name: str) -> bool:
        """Whether `name` has a limit at all."""
        return self._items[name] is not None

    async def start(self) -> None:
        """Make the shared store's first use at start, not under a herd: the cluster
        client reads its slot map and each master loads the counting scripts (redis-py
        loads a script on every master after a NOSCRIPT) before any request races to."""
        item = next((i for i in self._items.values() if i is not None), None)
        if item is None or isinstance(self._storage, MemoryStorage):
            return
        with contextlib.suppress(Exception):  # down at start: hit() copes, and says so
            async with asyncio.timeout(self.DEADLINE):
                await self._limiter.hit(item, "start", "start")
                await self._limiter.get_window_stats(item, "start", "start")

    async def hit(self, name: str, key: str) -> float | None:
        """Count one `name` for `key` in the shared store."""
        item = self._items[name]
        if item is None:
            return None
        if time.monotonic() < self._paused_until:
            self._unchecked(name, None)
            return None
        try:
            async with asyncio.timeout(self.DEADLINE):
                await self._in_flight.acquire()
        except TimeoutError:
            self._unchecked(name, None)
            return None
        try:
            return await self._check(self._limiter, item, name, key)
        except Exception as exc:  # whatever the store or its client raised, or the deadline
            self._paused_until = time.monotonic() + self.PAUSE
            self._unchecked(name, exc)
            return None
        finally:
            self._in_flight.release()

    def local(self, name: str, due: float, now: float) -> tuple[float, float | None]:
        """Count one `name` against a limit whose whole state the caller keeps in `due`
        (0.0 at first; GCRA's theoretical arrival time): (the new `due`, None) when
        allowed, else (`due` unchanged, the seconds to wait).

        For limits per socket: a counter per socket in a store is an entry, a lock and a
        timer living as long as the socket, which the collector's full passes walk; one
        float in the socket's own slot is no object at all. Like the store's counters,
        `amount` calls may come at once, then one per period / amount.
        """
        item = self._items[name]
        if item is None:
            return due, None
        period = item.get_expiry()
        step = period / item.amount
        due = max(due, now)
        wait = due + step - now - period
        if wait > 0:
            return due, max(1.0, math.ceil(wait))
        return due + step, None

    async def _check(self, limiter: SlidingWindowCounterRateLimiter,
                     item: RateLimitItem, name: str, key: str) -> float | None:
        async with asyncio.timeout(self.DEADLINE):
            if await limiter.hit(item, name, key):
                return None
            stats = await limiter.get_window_stats(item, name, key)
        return max(1.0, math.ceil(stats.reset_time - time.time()))

    def _unchecked(self, name: str, exc: Exception | None) -> None:
        metrics.rate_limit_unchecked.labels(name).inc()
        self._unlogged += 1
        now = time.monotonic()
        if exc is not None and now - self._logged_at >= self.LOG_EVERY:
            cause = exc.storage_error if isinstance(exc, limits.errors.StorageError) else exc
            log.warning("rate limits not checked (%d calls let through since the last line): "
                        "%s: %s", self._unlogged, type(cause).__name__, cause)
            self._logged_at = now
            self._unlogged = 0


def _storage(redis_url: str | None, prefix: str) -> Storage:
    """Where the shared counters live: Redis, a Redis Cluster, or (no REDIS_URL) memory."""
    scheme = (redis_url or "").partition(":")[0]
    # Bounded: a counter that cannot be reached must not hold a request for long.
    timeouts = {"socket_connect_timeout": RateLimits.DEADLINE,
                "socket_timeout": RateLimits.DEADLINE,
                "max_connections": 2 * RateLimits.IN_FLIGHT}
    if scheme in ("redis", "rediss"):
        return RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=prefix,
                            wrap_exceptions=True, **timeouts)
    if scheme == cluster.SCHEME:
        # The seeds are parsed by the broker's parser and handed to redis-py's RedisCluster
        # (limits passes its options through): limits' own URL parsing refuses an IPv6 seed.
        nodes, username, password = cluster.seeds(str(redis_url))
        options: dict[str, Any] = {
            "startup_nodes": [ClusterNode(host, port) for host, port in nodes], **timeouts}
        if username:
            options["username"] = username
        if password:
            options["password"] = password
        return RedisClusterStorage(f"async+{cluster.SCHEME}://", implementation="redispy",
                                   key_prefix=prefix, wrap_exceptions=True, **options)
    return MemoryStorage()
