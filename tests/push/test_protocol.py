"""The WebSocket protocol class (push/protocol.py, push/ws.py) on the wire: close codes,
ping/pong, fragments, sizes, compression refused, HTTP refusals, and no reference cycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import struct
import time
import weakref
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.auth import mint_token
from server.messages import BalanceFrame, ChangeInfo, encoder
from server.push.hub import Hub
from server.push.protocol import CLOSE_TIMEOUT, MAX_FRAMES, READ_SLICE
from server.push.ws import MAX_FRAME, MAX_INVALID, Connection
from tests.conftest import RunningApp, StartApp

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def token(app: RunningApp, account: str) -> str:
    return mint_token(app.settings.token_secret, account, 600)[0]


def hub_of(app: RunningApp) -> Hub:
    asgi: Any = app.server.config.app
    hub: Hub = asgi.state.resources.hub
    return hub


class Raw:
    """A hand-driven client: every frame and header as bytes, nothing done for us."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.head = b""

    @classmethod
    async def open(cls, app: RunningApp, path: str = "/v1/ws", extra: str = "",
                   *, rcvbuf: int | None = None) -> Raw:
        """A handshake; with `rcvbuf`, a receive buffer that small (a reader that lags)."""
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.settings.port)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.settings.port))
            reader, writer = await asyncio.open_connection(sock=sock)
        raw = cls(reader, writer)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode())
        async with asyncio.timeout(5):
            raw.head = await reader.readuntil(b"\r\n\r\n")
        return raw

    @property
    def status(self) -> int:
        return int(self.head[9:12])

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = bytes((first, (0x80 if mask else 0) | n))
        elif n < 65536:
            head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        self.writer.write(head + payload)

    async def frame(self, within: float = 5.0) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        async with asyncio.timeout(within):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "a server never masks"
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def message(self) -> dict[str, Any]:
        opcode, payload = await self.frame()
        assert opcode == TEXT, (opcode, payload)
        parsed: dict[str, Any] = json.loads(payload)
        return parsed

    async def close_code(self) -> int:
        """Read until the close frame; its code. The server then ends the TCP connection."""
        while True:
            opcode, payload = await self.frame()
            if opcode == CLOSE:
                # The server ends TCP after its close frame: EOF, or a reset when it left
                # unread what the client had sent (an oversized message).
                with contextlib.suppress(ConnectionResetError):
                    async with asyncio.timeout(5):
                        assert await self.reader.read() == b""
                self.close()
                return int(struct.unpack("!H", payload[:2])[0])

    def close(self) -> None:
        self.writer.transport.abort()
        self.writer.close()


async def test_a_client_close_is_echoed_and_the_server_ends_tcp(
    app: RunningApp, account: str
) -> None:
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    assert raw.status == 101
    assert (await raw.message())["type"] == "balance"
    raw.send(CLOSE, struct.pack("!H", 1000) + b"bye")
    assert await raw.close_code() == 1000
    await asyncio.sleep(0.05)
    assert account not in hub_of(app)._accounts


async def test_ping_is_answered_with_the_same_payload(app: RunningApp, account: str) -> None:
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    await raw.message()
    raw.send(PING, b"are you there")
    assert await raw.frame() == (PONG, b"are you there")
    raw.close()


async def test_the_server_pings_and_a_pong_keeps_the_socket(
    start_app: StartApp, account: str
) -> None:
    app = await start_app(ws_ping_interval=0.2)
    try:
        raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
        await raw.message()
        for _ in range(3):  # three rounds, each answered: the socket stays
            opcode, payload = await raw.frame(within=2.0)
            assert opcode == PING and len(payload) == 4
            raw.send(PONG, payload)
        assert account in hub_of(app)._accounts
        opcode, payload = await raw.frame(within=2.0)
        raw.send(PONG, b"nope")  # the wrong payload is no answer
        assert await raw.close_code() == 1011
    finally:
        await app.stop()


async def test_a_fragmented_auth_is_one_message(app: RunningApp, account: str) -> None:
    raw = await Raw.open(app)
    auth = json.dumps({"type": "auth", "token": token(app, account)}).encode()
    raw.send(TEXT, auth[:10], fin=False)
    raw.send(PING, b"between fragments")  # control frames may interleave
    raw.send(CONT, auth[10:30], fin=False)
    raw.send(CONT, auth[30:])
    assert await raw.frame() == (PONG, b"between fragments")
    snapshot = await raw.message()
    assert (snapshot["type"], snapshot["account_id"]) == ("balance", account)
    raw.close()


async def test_auth_and_sync_in_one_packet(app: RunningApp, account: str) -> None:
    """What a browser sends on open, arriving together: the sync is not taken for the
    first frame, and the snapshot answers both."""
    raw = await Raw.open(app)
    raw.writer.write(b"".join(_masked(json.dumps(m).encode()) for m in (
        {"type": "auth", "token": token(app, account)}, {"type": "sync", "versions": {}})))
    snapshot = await raw.message()
    assert (snapshot["type"], snapshot["account_id"]) == ("balance", account)
    raw.send(PING, b"still open")
    while (frame := await raw.frame())[0] != PONG:
        assert json.loads(frame[1])["type"] == "balance"
    raw.close()


def _masked(payload: bytes) -> bytes:
    assert len(payload) < 65536
    return struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)) + b"\0\0\0\0" + payload


async def test_oversized_messages_close_4400_or_1009(app: RunningApp, account: str) -> None:
    # Over MAX_FRAME in fragments: an error frame, then 4400.
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    await raw.message()
    raw.send(TEXT, b"x" * 3000, fin=False)
    raw.send(CONT, b"x" * 3000)
    assert (await raw.message())["code"] == "frame_too_large"
    assert await raw.close_code() == 4400
    # Over the hard cap (ws_max_size): refused as it arrives, before it is buffered.
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    await raw.message()
    raw.send(BINARY, b"x" * (16 * MAX_FRAME + 1))
    assert await raw.close_code() == 1009


async def test_protocol_errors_close_1002(app: RunningApp, account: str) -> None:
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    await raw.message()
    raw.send(TEXT, b'{"type":"sync","versions":{}}', mask=False)  # clients must mask
    assert await raw.close_code() == 1002
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    await raw.message()
    raw.send(CONT, b"no message to continue")
    assert await raw.close_code() == 1002


async def test_compression_is_never_negotiated(app: RunningApp, account: str) -> None:
    raw = await Raw.open(
        app, f"/v1/ws?token={token(app, account)}",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
    assert raw.status == 101
    assert b"sec-websocket-extensions" not in raw.head.lower()
    opcode, payload = await raw.frame()
    assert opcode == TEXT and json.loads(payload)["type"] == "balance"  # RSV1 clear: plain
    raw.close()
    # The websockets client offers permessage-deflate by default; it gets none.
    async with connect(f"{app.ws_url}?token={token(app, account)}") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert json.loads(await ws.recv())["type"] == "balance"


async def test_http_refusals_are_json(start_app: StartApp, account: str) -> None:
    app = await start_app(rate_limits="ws_connect=2/minute")
    try:
        raw = await Raw.open(app, "/v1/elsewhere")
        assert raw.status == 404
        body = await raw.reader.read()
        raw.close()
        assert json.loads(body)["error"] == "not_found"
        for _ in range(2):
            (await Raw.open(app, f"/v1/ws?token={token(app, account)}")).close()
        with pytest.raises(InvalidStatus) as refused:
            await connect(app.ws_url)
        response = refused.value.response
        assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
        assert json.loads(response.body or b"")["error"] == "rate_limited"
        # Not a WebSocket handshake at all: websockets' own 4xx, no upgrade.
        reader, writer = await asyncio.open_connection("127.0.0.1", app.settings.port)
        writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await app.stop()


async def test_a_failing_step_closes_4500(
    app: RunningApp, account: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = hub_of(app)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the hub broke")

    monkeypatch.setattr(hub, "register", broken)
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    assert await raw.close_code() == 4500
    assert "the hub broke" in caplog.text
    assert len(app.asgi.state.resources.lobby) == 0


async def test_a_closed_socket_is_freed_without_the_cyclic_collector(
    app: RunningApp, account: str
) -> None:
    hub = hub_of(app)
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    await raw.message()
    (conn,) = hub._accounts[account].listeners
    assert isinstance(conn, Connection)
    gone = weakref.ref(conn)
    del conn
    gc.disable()
    try:
        raw.send(CLOSE, struct.pack("!H", 1000))
        assert await raw.close_code() == 1000
        for _ in range(100):
            if gone() is None:
                break
            await asyncio.sleep(0.02)
        assert gone() is None, "a reference cycle keeps a closed socket"
    finally:
        gc.enable()


async def test_the_http_protocol_of_an_upgrade_is_freed_without_the_cyclic_collector(
    app: RunningApp, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's HTTP protocol hands the upgrade over and is dropped: freed at once by
    reference counting, not left in a cycle for the collector (protocol._release_http)."""
    handed: list[weakref.ref[HttpToolsProtocol]] = []
    upgrade = HttpToolsProtocol.handle_websocket_upgrade

    def watched(self: HttpToolsProtocol) -> None:
        handed.append(weakref.ref(self))
        upgrade(self)

    monkeypatch.setattr(HttpToolsProtocol, "handle_websocket_upgrade", watched)
    gc.disable()
    try:
        raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
        assert raw.status == 101 and len(handed) == 1
        assert handed[0]() is None, "the HTTP protocol waits for the cyclic collector"
        assert (await raw.message())["type"] == "balance"
        raw.close()
    finally:
        gc.enable()


def connection(app: RunningApp, account: str) -> Connection:
    (conn,) = hub_of(app)._accounts[account].listeners
    assert isinstance(conn, Connection)
    return conn


async def fill(app: RunningApp, account: str, conn: Connection) -> None:
    """Balance frames for the account until its socket's buffer is over the high-water
    mark (the peer reads nothing)."""
    reason = "x" * 2000
    for version in range(1000, 11000):
        change = ChangeInfo("usage", -1, reason, version, None)
        hub_of(app).deliver(account, version, encoder.encode(
            BalanceFrame(account, 0, 0, 0, version, change=change)))
        if conn.paused:
            return
        if version % 50 == 0:
            await asyncio.sleep(0.01)  # the kernel's buffers fill first
    raise AssertionError("the buffer never filled")


async def test_a_flood_of_frames_is_failed_4400_and_not_read_further(
    app: RunningApp, account: str
) -> None:
    """Frames that ask for no answer (pongs) cost only parsing, which a peer could ask for
    as fast as it can send: past MAX_FRAMES in a keepalive interval, the socket is failed."""
    raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}")
    await raw.message()
    conn = connection(app, account)
    raw.writer.write(b"".join(_pong() for _ in range(MAX_FRAMES * 20)))
    try:
        assert await raw.close_code() == 4400
    except TimeoutError:
        pytest.fail("the socket parsed them all and stayed open")
    # Parsed: the slices up to the one that crossed the bound, not all 12 KB sent.
    assert conn._frames <= MAX_FRAMES + READ_SLICE // len(_pong())


def _pong() -> bytes:
    return bytes((0x80 | PONG, 0x80)) + b"\0\0\0\0"


async def test_a_peer_that_does_not_read_is_not_read_either(
    start_app: StartApp, account: str
) -> None:
    """Over the high-water mark the socket stops reading: what the peer sends waits in
    its own buffers (here, frames that would each earn an error frame), and is read once
    it has taken what we wrote."""
    app = await start_app(ws_send_timeout=30.0)
    try:
        raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}", rcvbuf=4096)
        await raw.message()
        conn = connection(app, account)
        await fill(app, account, conn)
        assert conn.transport is not None and not conn.transport.is_reading()
        buffered = conn.buffered()
        raw.writer.write(b"".join(_masked(b"not json") for _ in range(MAX_INVALID + 5)))
        await asyncio.sleep(0.3)
        assert (conn._invalid, conn.buffered(), conn.open) == (0, buffered, True)
        conn._send_error("invalid_message", "an answer it would not take")
        assert conn.buffered() == buffered, "error frames are dropped, not buffered"
        # The peer reads: the server writes what waited, then reads the bad frames, and
        # answers as many as it takes before closing 4400.
        errors = 0
        while True:
            opcode, payload = await raw.frame()
            if opcode == CLOSE:
                break
            errors += json.loads(payload).get("code") == "invalid_message"
        assert int(struct.unpack("!H", payload[:2])[0]) == 4400
        assert errors == MAX_INVALID + 1
        raw.close()
    finally:
        await app.stop()


async def test_a_keepalive_failure_behind_a_full_buffer_is_cut(
    start_app: StartApp, account: str
) -> None:
    """The peer neither reads nor answers pings: its close frame can never go out, and the
    connection is cut CLOSE_TIMEOUT after the keepalive gives up, not held until it reads."""
    app = await start_app(ws_ping_interval=0.2, ws_send_timeout=30.0)
    try:
        raw = await Raw.open(app, f"/v1/ws?token={token(app, account)}", rcvbuf=4096)
        await raw.message()
        conn = connection(app, account)
        await fill(app, account, conn)
        started = time.monotonic()
        deadline = started + 0.2 * 2 + CLOSE_TIMEOUT + 2.0
        while conn.transport is not None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert conn.transport is None, "still held, waiting for the peer to read"
        assert time.monotonic() - started > CLOSE_TIMEOUT - 0.1  # it was given its time
        raw.close()
    finally:
        await app.stop()
