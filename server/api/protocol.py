"""uvicorn's httptools HTTP protocol, with each response leaving in one send.

uvicorn writes a response's head when the app sends `http.response.start` and its body
when it sends `http.response.body`: two `send` system calls per response. On loopback, and
on the virtual machines this runs on, a send is among the dearest things a request does
(it runs the receiver's TCP path and wakes it), and a debit's answer is one head and one
small body. So the transport uvicorn writes to here keeps what one turn of the event loop
writes and sends it at the start of the next: the head and the body of a response, or
the answers to several pipelined requests, leave together.

uvicorn takes the class through `Config(http=...)` (serve.py). A WebSocket upgrade gets
the real transport: a socket's frames are written straight to it (push/protocol.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Gathering(asyncio.Transport):
    """A transport whose writes of one event-loop turn go out in one write to `raw`."""

    __slots__ = ("_loop", "_pending", "raw")

    def __init__(self, raw: asyncio.Transport) -> None:
        super().__init__()
        self.raw = raw
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        if not self.raw.is_closing():  # the peer left meanwhile: nobody to answer
            self.raw.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.flush()  # what uvicorn wrote before closing still goes first
        self.raw.close()

    def abort(self) -> None:
        self._pending.clear()
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.raw.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.raw.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + sum(map(len, self._pending))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return False  # an EOF would have to wait for the pending writes: never asked


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `_Gathering` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Gathering(transport))

    def eof_received(self) -> None:
        # A client that half-closes after its request: the transport closes on returning,
        # so what was answered already must leave first (uvicorn had written it at once).
        if isinstance(self.transport, _Gathering):
            self.transport.flush()
        super().eof_received()

    def handle_websocket_upgrade(self) -> None:
        # The socket's protocol writes its frames itself, straight to the real transport;
        # anything this one wrote (nothing, before a 101) goes first.
        gathering = self.transport
        if isinstance(gathering, _Gathering):
            gathering.flush()
            self.transport = gathering.raw
        super().handle_websocket_upgrade()
