"""In-memory broker: one process only (REDIS_URL unset); delivery is a function call."""

from __future__ import annotations

from collections.abc import Sequence

from server.push.broker.base import OnMessage, OnReconnect


class MemoryBroker:
    """Delivers to this process's own subscriptions; never disconnects."""

    def __init__(self) -> None:
        self._channels: set[str] = set()
        self._on_message: OnMessage | None = None

    @property
    def connected(self) -> bool:
        return self._on_message is not None

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self._on_message = on_message

    async def disconnect(self) -> None:
        self._on_message = None
        self._channels.clear()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        on_message = self._on_message
        if on_message is None:
            raise ConnectionError("memory broker is not connected")
        for channel, data in messages:
            if channel in self._channels:
                on_message(channel, data)
