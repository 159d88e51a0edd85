"""The one place that reaches into uvicorn: a WebSocket protocol that takes pre-framed bytes.

uvicorn accepts a WebSocket protocol class of our own (`Config(ws=...)`, see serve.py); ours
is its websockets-sansio protocol plus a small writing surface, offered to the app through
the ASGI scope's `extensions` (the spec's place for server extras). The hub's frames are
then written to the transport as the same bytes for every socket, with no task switch and
no ASGI `send` per socket: that is what lets one process keep up with a bare `websockets`
broadcast.

It also spreads uvicorn's shutdown: uvicorn closes every socket at once (1012), and they
would all reconnect to the next instance at once; ours close over `drain_seconds`.

It builds on uvicorn's attributes `transport`, `writable`, `close_sent`, `disconnected`,
`handshake_complete`, `scope`, `loop` and its methods `handle_connect`, `shutdown` and
`connection_lost`, which are not a public API: pyproject.toml pins uvicorn's minor version
and tests/push/test_transport.py fails loudly if any of them moves.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

EXTENSION = "balance.frames"
"""The scope extension naming the socket's `FramesProtocol`."""


class FramesProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol that also writes pre-framed server frames."""

    drain_seconds = 0.0  # see with_drain()

    @classmethod
    def with_drain(cls, seconds: float) -> type[FramesProtocol]:
        """This protocol, closing its sockets over `seconds` when the server shuts down."""
        return type(cls.__name__, (cls,), {"drain_seconds": seconds})

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and self.drain_seconds > 0:
            self.loop.call_later(random.uniform(0, self.drain_seconds), self._shutdown_now)
        else:
            super().shutdown()

    def _shutdown_now(self) -> None:
        if not self.disconnected and not self.close_sent:
            super().shutdown()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: dict[str, Any] | None = getattr(self, "scope", None)
        if scope is not None:  # None: the handshake was refused before the app saw it
            scope["extensions"][EXTENSION] = self

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The scope names us and we hold the scope: break that cycle, so a closed socket is
        # freed at once rather than by a full collection of the cyclic GC.
        scope: dict[str, Any] | None = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(EXTENSION, None)

    def can_write(self) -> bool:
        """True while a frame written now goes out without queueing behind a full buffer."""
        return self.writable.is_set() and not self.close_sent and not self.transport.is_closing()

    async def wait_writable(self) -> bool:
        """Wait until the transport drains below its high-water mark; False if it closed."""
        await self.writable.wait()
        return self.can_write()

    def write_frames(self, wire: bytes) -> None:
        """Write already-framed server frames (unmasked, so identical for every socket)."""
        self.transport.write(wire)

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer."""
        return self.transport.get_write_buffer_size()

    def close_now(self, close_frame: bytes, grace: float) -> None:
        """Close a socket whose buffer is full: the close frame goes at the end of the buffer,
        and the connection is aborted if the peer has not taken it within `grace` seconds."""
        self.transport.write(close_frame)
        self.close_sent = True
        self.loop.call_later(grace, self._finish_close)

    def abort_unless_closing(self) -> None:
        """Drop a peer that could not even take a close frame."""
        if not self.transport.is_closing() and not self.close_sent:
            self.transport.abort()

    def _finish_close(self) -> None:
        transport: asyncio.Transport = self.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()  # the peer never took its close frame
        else:
            transport.close()
