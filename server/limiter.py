"""Rate limits (API.md "Rate limits"), with the `limits` library.

`BALANCE_RATE_LIMITS` sets them by name, e.g. `me=120/minute;checkout=10/minute;
ws_connect=30/minute;ws_sync=12/minute;service=` (an empty value: no limit). With
REDIS_URL the counters live in Redis (or a Redis Cluster: `limits` puts each counter's keys
in one hash slot), so every instance counts against the same limit;
without it, in this process's memory. A limiter that cannot reach Redis lets requests
through (and says so in the log): limits protect the service, they must not stop it.
"""

from __future__ import annotations

import logging
import math
import time

import limits
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

log = logging.getLogger("balance.limits")

DEFAULTS = {
    "me": "120/minute",  # /v1/me* per account
    "checkout": "10/minute",  # /v1/me/checkout per account
    "ws_sync": "12/minute",  # sync frames per socket (the JS client sends 2 a minute)
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
    """`hit(name, key)`: None when allowed, else the seconds to wait."""

    def __init__(self, spec: str, redis_url: str | None, prefix: str) -> None:
        self._items = parse(spec)
        storage: Storage = MemoryStorage()
        # Bounded: a counter that cannot be reached must not hold a request for long.
        timeouts = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
        kind = {"redis": RedisStorage, "rediss": RedisStorage,
                "redis+cluster": RedisClusterStorage}.get((redis_url or "").partition(":")[0])
        if kind is not None:
            storage = kind(f"async+{redis_url}", implementation="redispy",
                           key_prefix=f"{prefix}:limits", wrap_exceptions=True, **timeouts)
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())

    def limits(self, name: str) -> bool:
        """Whether `name` has a limit at all."""
        return self._items[name] is not None

    async def hit(self, name: str, key: str, *, local: bool = False) -> float | None:
        """Count one `name` for `key`; `local` keeps the count in this process (per socket)."""
        item = self._items[name]
        if item is None:
            return None
        limiter = self._local if local else self._limiter
        try:
            if await limiter.hit(item, name, key):
                return None
            stats = await limiter.get_window_stats(item, name, key)
        except limits.errors.StorageError as exc:
            log.warning("rate limit %s not checked: %s", name, type(exc.storage_error).__name__)
            return None
        return max(1.0, math.ceil(stats.reset_time - time.time()))
