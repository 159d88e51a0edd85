"""The broker interface: fan a committed change out to every server instance.

Channels are plain strings; the hub names them. A broker subscribes upstream once per
channel however many local sockets want it (the hub counts them), and keeps itself
connected: after any reconnect it resubscribes, then calls `on_reconnect` with the channels
that may have missed messages (all of them after a single Redis's outage, one shard's after a
cluster node's), so the hub can resync their sockets from PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

OnMessage = Callable[[str, bytes], None]
OnReconnect = Callable[[frozenset[str]], None]
"""Called with channels that may have missed messages, once they are subscribed (again);
it must not block (the hub only schedules their resync)."""


class Unpublished(ConnectionError):
    """Part of a publish did not reach the backend (a cluster master is down); the rest did."""

    def __init__(self, messages: Sequence[tuple[str, bytes]]) -> None:
        super().__init__(f"{len(messages)} messages not published")
        self.messages = messages


class Broker(Protocol):
    """Publish/subscribe between server instances."""

    @property
    def connected(self) -> bool:
        """True while every subscriber connection is up and subscribed."""
        ...

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        """Start; never fails when the backend is down (it keeps retrying in the background)."""
        ...

    async def disconnect(self) -> None:
        """Stop the background tasks and close connections."""
        ...

    async def subscribe(self, channel: str) -> None:
        """Listen to a channel; returns once the backend confirmed it (or is down)."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Stop listening to a channel."""
        ...

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish (channel, data) pairs in order; raises if the backend is unreachable
        (at once when it is known to be down), Unpublished if only part of it is."""
        ...
