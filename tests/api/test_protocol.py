"""api/protocol.py: a response's head and body leave in one write; an upgrade gets the
real transport. uvicorn's own protocol runs here, over a transport that records writes."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from server.api.protocol import HttpProtocol


class Recording(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass


class Upgraded(asyncio.Protocol):
    """Stands for the WebSocket protocol: keeps the transport it was handed."""

    made: ClassVar[list[asyncio.BaseTransport]] = []

    def __init__(self, config: Any, server_state: Any, app_state: Any) -> None:
        pass

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Upgraded.made.append(transport)


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def protocol(transport: Recording) -> HttpProtocol:
    config = uvicorn.Config(answer, http=HttpProtocol, ws=Upgraded, lifespan="off",
                            log_config=None)
    config.load()
    http = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    http.connection_made(transport)
    return http


async def settle() -> None:
    for _ in range(10):  # the app's task, then the turn after its writes
        await asyncio.sleep(0)


async def test_a_response_leaves_in_one_write() -> None:
    transport = Recording()
    http = protocol(transport)
    http.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await settle()
    assert len(transport.writes) == 1, transport.writes
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nok")
    http.data_received(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    await settle()
    # The second answer, in one write too, and before the connection is closed.
    assert len(transport.writes) == 2 and transport.writes[1].endswith(b"\r\n\r\nok")
    assert transport.closed


async def test_an_upgrade_gets_the_real_transport() -> None:
    transport = Recording()
    http = protocol(transport)
    Upgraded.made.clear()
    http.data_received(b"GET /v1/ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\n"
                       b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
                       b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert Upgraded.made == [transport]


async def test_an_answer_written_before_the_client_half_closes_still_leaves() -> None:
    transport = Recording()
    http = protocol(transport)
    http.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    for _ in range(3):  # the app's task answers; its write waits for the next turn
        await asyncio.sleep(0)
        if http.cycle is not None and http.cycle.response_complete:
            break
    assert http.cycle.response_complete
    http.eof_received()  # the transport closes once this returns
    transport.closed = True
    await settle()
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\nok")
