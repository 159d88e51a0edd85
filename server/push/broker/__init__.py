"""Pick a broker by URL scheme: redis://, rediss:// or redis+cluster:// for many processes,
none for one."""

from __future__ import annotations

from urllib.parse import urlsplit

from server.push.broker.base import Broker
from server.push.broker.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "make_broker"]


def make_broker(url: str | None) -> Broker:
    """The Redis broker for a redis:// URL, the cluster one for redis+cluster://, the
    in-memory one for None, "" or memory://."""
    scheme = urlsplit(url).scheme if url else "memory"
    if scheme == "memory":
        return MemoryBroker()
    if scheme in ("redis", "rediss", "unix"):
        from server.push.broker.redis import RedisBroker

        return RedisBroker(url or "")
    if scheme == "redis+cluster":
        from server.push.broker.cluster import ClusterBroker

        return ClusterBroker(url or "")
    raise ValueError(
        f"REDIS_URL has an unknown scheme {scheme!r}: use redis://, rediss://, unix:// "
        "or redis+cluster://"
    )
