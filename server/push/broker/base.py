"""The broker interface: fan a committed change out to every server instance.

Channels are plain strings; the hub names them. A broker subscribes upstream once per
channel however many local sockets want it (the hub counts them), and keeps itself
connected: after any reconnect it resubscribes, then calls `on_reconnect` so the hub can
resync every local socket from PostgreSQL (messages published while it was away are lost).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

OnMessage = Callable[[str, bytes], None]
OnReconnect = Callable[[], Coroutine[Any, Any, None]]


class Broker(Protocol):
    """Publish/subscribe between server instances."""

    @property
    def connected(self) -> bool:
        """True while the subscriber connection is up and subscribed."""
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
        """Publish (channel, data) pairs in order; raises if the backend is unreachable."""
        ...
