"""A server WebSocket as one asyncio protocol object: websockets' sans-I/O handshake, then
frames read and written here.

uvicorn takes a WebSocket protocol class of our own through `Config(ws=...)` (serve.py): it
hands each upgraded connection to that class as (config, server_state, app_state). The
opening handshake is websockets' `ServerProtocol` (request parsing, the 101, its 400/426
answers); once the 101 is out, that object is dropped and the client's frames are parsed
here (RFC 6455 section 5, the same close codes websockets sends: 1002, 1007, 1009), and
server frames are written straight to the transport: no task, no stream reader and no
ASGI queue per socket, which is what keeps an idle socket small and lets one process keep
up with a bare `websockets` broadcast.

Why not websockets' frame parser after the handshake: it is a generator suspended per
socket, and every frame it parses leaves new objects behind until the socket's next frame
(the parsed frame, a generator for the next read, two lists). Every socket receives a pong
per ping interval, so with thousands of sockets those objects kept reaching the
collector's oldest generation and every full collection walked them (20-30 ms pauses). A
parsed frame here leaves nothing behind but the bytes of an unfinished one.

Subclasses decide what a handshake may open (`on_request`) and what a message means
(`on_message`); `connection_lost` is theirs to extend. Nothing here keeps a reference cycle
once the connection is lost, so a closed socket is freed by reference counting alone.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import struct
from http import HTTPStatus
from typing import Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import ProtocolError
from websockets.frames import Close
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask

from server.errors import CLOSE_BAD_REQUEST
from server.push.frame import control_frame, text_frame

CLOSE_TIMEOUT = 2.0  # seconds the peer has to answer our close frame before TCP is cut
# Frames a peer may send per keepalive interval, of any kind (a browser sends an auth, a
# sync every 30 s and its pongs); past it the connection is failed (4400) and not read
# again. Frames that ask for no answer (pongs) cost nothing but parsing, and a peer may send
# them as fast as we read: without a bound, one socket would hold the event loop.
MAX_FRAMES = 100
# Bytes parsed at a time: one read may bring 256 KiB of 7-byte frames, some 185 ms of
# parsing, and nothing after a failed connection's slice is parsed.
READ_SLICE = 4096

WIRE_LOG = logging.getLogger("balance.ws.wire")
"""websockets' own log lines: one per socket opened and closed at INFO, frames at DEBUG."""
WIRE_LOG.setLevel(logging.WARNING)  # a line per socket costs more than the socket

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# What is done with the bytes a peer sends: the handshake (websockets' parser), frames
# (ours), or nothing (after a close frame either way, or a protocol error).
_HANDSHAKE, _FRAMES, _DISCARD = range(3)


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection: the wire, keepalive, flow control and uvicorn's shutdown."""

    __slots__ = (
        "_close_timer",
        "_config",
        "_connections",
        "_ended",
        "_fragments",
        "_frames",
        "_ping_payload",
        "_rx",
        "_unparsed",
        "conn",
        "open",
        "paused",
        "transport",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._config = config
        self._connections: set[Any] = server_state.connections
        # The handshake's parser, until the 101 is out. No extensions: frames are framed
        # once for every socket, so none is compressed.
        self.conn: ServerProtocol | None = ServerProtocol(
            max_size=config.ws_max_size, logger=WIRE_LOG)
        self.transport: asyncio.Transport | None = None
        self.open = False  # the 101 went out and no close frame has been sent
        self.paused = False  # the transport's buffer is over its high-water mark
        self._rx = _HANDSHAKE
        # The start of a frame not yet whole: a bytearray, so a frame that arrives in many
        # pieces is copied once, not once per piece.
        self._unparsed: bytearray | None = None
        # A fragmented message being received: its first frame's opcode, then its payloads.
        self._fragments: list[Any] | None = None
        self._frames = 0  # received since the last keepalive visit (MAX_FRAMES)
        self._ping_payload: bytes | None = None  # the ping awaiting its pong
        self._close_timer: asyncio.TimerHandle | None = None
        self._ended = False
        self.setup(app_state)

    # ------------------------------------------------------------ for subclasses

    def setup(self, app_state: dict[str, Any]) -> None:
        """The subclass's own state; `app_state` is the lifespan's (what the app yielded)."""

    def on_request(self, request: Request, response: Response) -> None:
        """A valid upgrade request arrived: call `accept` or `reject` (now or later)."""
        raise NotImplementedError

    def on_message(self, data: bytes) -> None:
        """A whole message, text or binary (fragments joined), at most `ws_max_size` bytes."""
        raise NotImplementedError

    def on_close(self) -> None:
        """The WebSocket is closing or closed (once): stop sending, let go of resources."""

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connections.add(self)  # uvicorn's shutdown calls shutdown() on each
        _release_http(self.transport)

    def data_received(self, data: bytes) -> None:
        if len(data) <= READ_SLICE:
            self._receive(data)
            return
        for start in range(0, len(data), READ_SLICE):
            self._receive(data[start:start + READ_SLICE])
            if self.transport is None or self.transport.is_closing():
                return  # we are not reading from this peer any more

    def _receive(self, data: bytes) -> None:
        if self._rx == _FRAMES:
            unparsed = self._unparsed
            if unparsed is None:
                self._parse(data)
            else:
                unparsed += data
                self._parse(unparsed)
            return
        conn = self.conn
        if self._rx == _DISCARD or conn is None:
            return
        conn.receive_data(data)
        # Frames sent before our 101 break RFC 6455 (4.1: the client waits for it): they
        # are dropped unread, as they always were.
        for event in conn.events_received():
            if isinstance(event, Request):  # the opening handshake's
                response = conn.accept(event)
                if response.status_code == 101:
                    self.on_request(event, response)
                else:  # not a valid WebSocket upgrade: websockets' 400/426 answer
                    self.reject_with(response)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._end()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.transport = None  # the transport points at us: no cycle left behind
        self._rx = _DISCARD
        self._drop_handshake()

    def _drop_handshake(self) -> None:
        # websockets' parser is a generator suspended inside a method of its protocol, so
        # the two point at each other until it ends: close it, or the object would wait
        # for the cyclic collector (and leak past gc.freeze()).
        if self.conn is not None:
            self.conn.parser.close()
            self.conn = None

    def pause_writing(self) -> None:
        self.paused = True
        # The peer is not taking what we write: stop taking what it writes, so whatever it
        # would make us answer (error frames, pongs) backs up in its own buffers, not ours.
        if self.transport is not None:
            self.transport.pause_reading()
        self.on_paused()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()
        self.on_writable()

    def on_paused(self) -> None:
        """The buffer went over its high-water mark: reading stopped until it drains."""

    def on_writable(self) -> None:
        """The buffer drained below its low-water mark (subclasses send what waited)."""

    # ------------------------------------------------------------ uvicorn's shutdown

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1012 (subclasses may spread it over time)."""
        if self.open:
            self.close_socket(1012, "service_restart")
        elif self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ handshake

    def accept(self, response: Response) -> None:
        """Send the 101, start reading frames and the keepalive."""
        if self.transport is None or self.transport.is_closing() or self.conn is None:
            return
        self.conn.send_response(response)
        self._flush()
        self._drop_handshake()
        self._rx = _FRAMES
        self.open = True
        interval = self._config.ws_ping_interval
        if interval:
            Keepalive.of(interval).add(self)

    def reject(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Answer the upgrade with an HTTP error and close."""
        self.reject_with(Response(status, HTTPStatus(status).phrase, Headers({
            "Date": email.utils.formatdate(usegmt=True),
            "Connection": "close",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            **(headers or {}),
        }), body))

    def reject_with(self, response: Response) -> None:
        if self.conn is not None:
            self.conn.send_response(response)  # for a non-101, websockets then sends EOF
            self._flush()

    # ------------------------------------------------------------ sending

    def write(self, wire: bytes) -> None:
        """Write already-framed server frames (unmasked, so the same bytes for every socket)."""
        if self.transport is not None:
            self.transport.write(wire)

    def send_text(self, data: bytes) -> None:
        """One text message, if the socket is open and keeping up: a peer that is not
        reading cannot make us buffer what it provokes (it is closed if it stays so)."""
        if self.open and not self.paused:
            self.write(text_frame(data))

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close_socket(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; TCP is cut if the peer does not answer in time."""
        if not self.open or self.transport is None:
            return
        self.open = False
        self.transport.write(_close_frame(code, reason))
        self._end()
        self._cut_later()

    def fail(self, code: int, reason: str = "") -> None:
        """Send a close frame and end the connection without waiting for an answer (the
        peer is not answering, or is not worth waiting for); nothing more is read."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._rx = _DISCARD
        if self.open:
            self.open = False
            transport.write(_close_frame(code, reason))
            self._end()
        # After what was written: the close frame goes out first, to a peer that reads.
        transport.close()
        self._cut_later()

    def _cut_later(self) -> None:
        """Give the peer CLOSE_TIMEOUT to end the connection (or to take what is buffered,
        once we closed our side), then cut it."""
        if self._close_timer is None and self.transport is not None:
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self._cut)

    def _cut(self) -> None:
        self._close_timer = None
        transport = self.transport
        if transport is None:
            return
        # Closing already: still waiting for the peer to take what we buffered (a peer at
        # zero window would hold it, and us, forever).
        if transport.is_closing() or transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def _end(self) -> None:
        """The socket stops being usable (closing handshake begun, or TCP gone)."""
        self.open = False
        self._fragments = None
        interval = self._config.ws_ping_interval
        if interval:
            Keepalive.of(interval).discard(self)
        if not self._ended:
            self._ended = True
            self.on_close()

    def _flush(self) -> None:
        """Write what the handshake's parser has queued; its EOF means: close the TCP side."""
        transport = self.transport
        if transport is None or self.conn is None:
            return
        for chunk in self.conn.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                transport.close()  # after what was written: the close frame goes out first
                if transport.get_write_buffer_size():
                    self._cut_later()  # which a peer that does not read never takes

    # ------------------------------------------------------------ receiving

    def _parse(self, buf: bytes | bytearray) -> None:
        """The whole frames in `buf` (RFC 6455 5.2); what follows them waits for more."""
        pos, end = 0, len(buf)
        max_size = self._config.ws_max_size
        while self._rx == _FRAMES and end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, pos + 2)
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            opcode = b0 & 0x0F
            # Checked on the header, before a payload is waited for (or buffered).
            if b0 & 0x70:
                self.fail(1002, "reserved bits must be 0")
                return
            if not b1 & 0x80:
                self.fail(1002, "incorrect masking")
                return
            if opcode >= _CLOSE:
                if opcode > _PONG:
                    self.fail(1002, f"invalid opcode: {opcode}")
                    return
                if length > 125 or not b0 & 0x80:
                    self.fail(1002, "control frame too long or fragmented")
                    return
            elif opcode > _BINARY:
                self.fail(1002, f"invalid opcode: {opcode}")
                return
            else:
                fragments = self._fragments
                if length + (sum(map(len, fragments[1:])) if fragments else 0) > max_size:
                    self.fail(1009, f"over size limit ({length} bytes)")
                    return
            start = pos + head + 4
            if end - start < length:
                break
            payload = apply_mask(buf[start:start + length], buf[start - 4:start])
            pos = start + length
            self._on_frame(opcode, bool(b0 & 0x80), payload)
        if pos == end or self._rx != _FRAMES:
            self._unparsed = None
        elif isinstance(buf, bytearray):
            del buf[:pos]
        else:
            self._unparsed = bytearray(buf[pos:])

    def _on_frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        self._frames += 1
        if self._frames > MAX_FRAMES and self._config.ws_ping_interval:  # (else never reset)
            self.fail(CLOSE_BAD_REQUEST.code, f"more than {MAX_FRAMES} frames in "
                      f"{self._config.ws_ping_interval:g} s")
            return
        if opcode in (_TEXT, _BINARY):
            if self._fragments is not None:
                self.fail(1002, "expected a continuation frame")
            elif fin:
                self._message(opcode, payload)
            else:
                self._fragments = [opcode, payload]
        elif opcode == _CONT:
            fragments = self._fragments
            if fragments is None:
                self.fail(1002, "unexpected continuation frame")
                return
            fragments.append(payload)
            if fin:
                self._fragments = None
                self._message(fragments[0], b"".join(fragments[1:]))
        elif opcode == _PING:
            if self.open and self.transport is not None:
                self.transport.write(control_frame(_PONG, payload))
        elif opcode == _PONG:
            if self._ping_payload is not None and payload == self._ping_payload:
                self._ping_payload = None
        else:
            self._on_close_frame(payload)

    def _on_close_frame(self, payload: bytes) -> None:
        """The peer's close: echoed if we had not sent ours; then a server ends TCP."""
        try:
            Close.parse(payload)
        except ProtocolError as exc:
            self.fail(1002, str(exc))
            return
        except UnicodeDecodeError as exc:
            self.fail(1007, f"{exc.reason} at position {exc.start}")
            return
        if self._fragments is not None:
            self.fail(1002, "incomplete fragmented message")
            return
        self._rx = _DISCARD
        transport = self.transport
        if transport is None:
            return
        if self.open:
            self.open = False
            # The original payload, as websockets echoes it (an empty one stays empty).
            transport.write(control_frame(_CLOSE, payload))
        self._end()
        transport.close()
        self._cut_later()  # a peer that does not take the echo is not waited for

    def _message(self, opcode: int, data: bytes) -> None:
        if opcode == _TEXT:
            try:
                data.decode()
            except UnicodeDecodeError as exc:
                self.fail(1007, f"{exc.reason} at position {exc.start}")
                return
        if self.open:  # after our close frame, messages are dropped unread
            self.on_message(data)

    # ------------------------------------------------------------ keepalive

    def keepalive(self) -> None:
        """Once per ping interval (Keepalive): drop the socket if the last ping went
        unanswered, else ping it again."""
        if not self.open:
            return
        if self._ping_payload is not None:
            self.fail(1011, "keepalive ping timeout")
            return
        self._frames = 0
        # A random payload: a stale or unsolicited pong does not count as an answer.
        self._ping_payload = struct.pack("!I", random.getrandbits(32))
        self.write(control_frame(_PING, self._ping_payload))


class Keepalive:
    """Pings every socket once per interval from one timer per process, not one per socket.

    A timer per socket would be thousands of objects, each re-created every interval and
    living through it: the cyclic collector's full passes would walk them all. Here sockets
    sit in buckets, and each tick visits one bucket, so each socket is visited once per
    interval (a pong must come back before the next visit: the ping timeout is the interval).

    A socket's bucket is picked by its hash, not by when it arrived, and a tick is short
    (TICK): the thousands of sockets of a reconnect herd, arriving within seconds, are
    pinged spread over the whole interval, a few per tick. Buckets by arrival held a herd's
    second in one bucket, and its visit (hundreds of pings, then their pongs) held the
    event loop, and every frame queued behind it, for milliseconds at a time.
    """

    TICK = 0.05  # seconds between visits
    _wheels: ClassVar[dict[tuple[asyncio.AbstractEventLoop, float], Keepalive]] = {}

    def __init__(self, interval: float) -> None:
        ticks = max(1, round(interval / self.TICK))
        self._buckets: list[set[WebSocketProtocol]] = [set() for _ in range(ticks)]
        self._tick = interval / ticks
        self._at = 0
        self._timer: asyncio.TimerHandle | None = None
        self._count = 0

    @classmethod
    def of(cls, interval: float) -> Keepalive:
        """The wheel of this event loop for this interval."""
        key = (asyncio.get_running_loop(), interval)
        wheel = cls._wheels.get(key)
        if wheel is None:
            wheel = cls._wheels[key] = cls(interval)
        return wheel

    def add(self, socket: WebSocketProtocol) -> None:
        # Its first ping comes within an interval; its pong has a whole one after that.
        self._buckets[hash(socket) % len(self._buckets)].add(socket)
        self._count += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._visit)

    def discard(self, socket: WebSocketProtocol) -> None:
        bucket = self._buckets[hash(socket) % len(self._buckets)]
        if socket in bucket:
            bucket.discard(socket)
            self._count -= 1

    def _visit(self) -> None:
        bucket = self._buckets[self._at]
        self._at = (self._at + 1) % len(self._buckets)
        for socket in list(bucket):
            socket.keepalive()
        if self._count:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._visit)
        else:
            self._timer = None


def _release_http(transport: asyncio.Transport) -> None:
    """Let reference counting free the HTTP protocol that hands the upgrade over to us.

    uvicorn's httptools protocol passes the connection on from inside its data_received
    (`handle_websocket_upgrade`, while it is still the transport's protocol) and is never
    told the connection ended, so its parser, which holds the protocol's bound callbacks,
    keeps the two in a cycle that only the collector frees: some 20 objects per socket
    opened, most of what young collections walked and freed during a reconnect herd.
    Dropping the parser, as uvicorn's own connection_lost does, breaks the cycle.
    tests/push/test_protocol.py fails if a new uvicorn keeps it another way.
    """
    http = transport.get_protocol()
    if isinstance(http, HttpToolsProtocol):
        http.parser = None  # type: ignore[assignment]  # (uvicorn's connection_lost does)


def _close_frame(code: int, reason: str) -> bytes:
    """A close frame with `code` and as much of `reason` as a control frame holds."""
    reason = reason.encode()[:123].decode(errors="ignore")  # never half a character
    return control_frame(_CLOSE, Close(code, reason).serialize())
