"""GET /v1/ws: handshake, first-frame auth, receive loop, and sends with latest-value conflation.

Frames fanned out by the hub are written straight to the socket's transport as the same
pre-framed bytes for every socket (hub.Frame.wire), without a task switch or an ASGI send
per socket: that is what lets one process keep up with a bare `websockets` broadcast. It
needs uvicorn's websockets-sansio protocol behind the ASGI `receive`; under any other
server the same logic runs through ASGI `send` from one writer task per backlogged socket.

A socket that cannot keep up keeps at most one pending frame per account (the newest);
if it stays backlogged for `ws_send_timeout` it is closed with 4509 and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import msgspec
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from server import metrics
from server.errors import (
    CLOSE_AUTH_TIMEOUT,
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_MANY,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    ApiError,
    CloseCode,
)
from server.hub import Frame, Hub, HubClosed, TooManySockets
from server.messages import AuthMessage, ErrorFrame, SyncMessage, client_decoder, encoder

log = logging.getLogger("balance.ws")

MAX_FRAME = 4096  # bytes; a browser only ever sends auth and sync
CLOSE_GRACE = 2.0  # seconds a too-slow socket gets to take its close frame before abort


class WsSettings(Protocol):
    """The fields of server.config.Settings this module reads."""

    @property
    def allowed_origins(self) -> tuple[str, ...]: ...

    @property
    def ws_auth_timeout(self) -> float: ...

    @property
    def ws_send_timeout(self) -> float: ...

    @property
    def ws_ping_interval(self) -> float: ...


class Identity(Protocol):
    @property
    def account_id(self) -> str: ...

    @property
    def expires_at(self) -> float: ...


class Tokens(Protocol):
    def verify(self, token: str) -> Identity: ...


class _Closed(Exception):
    """The peer went away, or we closed the socket."""

    def __init__(self, code: CloseCode | None = None, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Endpoint:
    """The /v1/ws route, as a bare ASGI app: starlette's WebSocketRoute mounts it without the
    per-socket session and exception wrappers, whose frames would live as long as the socket."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        res: Any = websocket.app.state.resources
        settings: WsSettings = res.settings
        origin = websocket.headers.get("origin")
        if settings.allowed_origins and origin not in settings.allowed_origins:
            # Refused at the handshake: the browser sees HTTP 403, no socket is opened.
            await websocket.close(CLOSE_FORBIDDEN.code, CLOSE_FORBIDDEN.name)
            return
        proto, _ = _uvicorn_transport(websocket)
        if proto is not None:
            # uvicorn's keepalive is the ping: one every ws_ping_interval, and a socket whose
            # pong is not back within another interval is dropped. Set before accept() starts it.
            proto.ping_interval = proto.ping_timeout = settings.ws_ping_interval
        await websocket.accept()
        hub: Hub = res.hub
        if not hub.accepting:
            await websocket.close(CLOSE_SERVICE_RESTART.code, CLOSE_SERVICE_RESTART.name)
            return
        await Connection(websocket, hub, res.tokens, settings).run()


websocket_endpoint = _Endpoint()
"""Mount as `WebSocketRoute("/v1/ws", websocket_endpoint)`, or wrap the app in WebSocketFirst."""


class WebSocketFirst:
    """Wraps the app so /v1/ws sockets skip the middleware stack (HTTP is unaffected).

    Every ASGI frame between uvicorn and the endpoint stays alive as long as its socket:
    skipping starlette's middleware and router saves about 4 KiB per idle socket.
    """

    def __init__(self, app: Starlette, path: str = "/v1/ws") -> None:
        self.app = app
        self.path = path

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == self.path:
            scope["app"] = self.app
            await websocket_endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _close_frame(code: CloseCode) -> bytes:
    reason = code.name.encode()
    return struct.pack("!BBH", 0x88, 2 + len(reason), code.code) + reason


class Connection:
    """One browser socket: its identity, accounts, and what is waiting to be sent."""

    __slots__ = (
        "_backlog_since",
        "_closing",
        "_expiry",
        "_flusher",
        "_last",
        "_pending",
        "_proto",
        "_stall_timer",
        "_transport",
        "accounts",
        "expires_at",
        "hub",
        "settings",
        "tokens",
        "ws",
    )

    def __init__(self, ws: WebSocket, hub: Hub, tokens: Tokens, settings: WsSettings) -> None:
        self.ws = ws
        self.hub = hub
        self.tokens = tokens
        self.settings = settings
        self.accounts: tuple[str, ...] = ()
        self.expires_at = 0.0
        self._last: dict[str, int] = {}  # account -> newest version written or pending
        self._pending: dict[str, Frame] = {}  # account -> newest frame not yet written
        self._backlog_since = 0.0
        self._flusher: asyncio.Task[None] | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._closing = False
        self._proto, self._transport = _uvicorn_transport(ws)

    # ------------------------------------------------------------ the socket's life

    async def run(self) -> None:
        """Authenticate, register with the hub, then serve until the socket closes."""
        registered = False
        try:
            identity = await self._authenticate()
            self.accounts = (identity.account_id,)
            self._set_expiry(identity.expires_at)
            try:
                await self.hub.register(self, self.accounts)
            except TooManySockets:
                raise _Closed(CLOSE_TOO_MANY) from None
            except HubClosed:
                raise _Closed(CLOSE_SERVICE_RESTART) from None
            registered = True
            metrics.sockets_connected.inc()
            while True:
                await self._handle(await self._receive())
        except _Closed as closed:
            if closed.code is not None:
                await self._close(closed.code, closed.message)
        except Exception:
            log.exception("websocket failed")
            await self._close(CLOSE_INTERNAL)
        finally:
            if registered:
                metrics.sockets_connected.dec()
                self.hub.unregister(self, self.accounts)
            self._closing = True
            self._pending.clear()
            for handle in (self._expiry, self._stall_timer):
                if handle is not None:
                    handle.cancel()
            if self._flusher is not None:
                self._flusher.cancel()

    async def _authenticate(self) -> Identity:
        token = self.ws.query_params.get("token")
        if token is None:
            try:
                first = await asyncio.wait_for(self._receive(), self.settings.ws_auth_timeout)
            except TimeoutError:
                raise _Closed(CLOSE_AUTH_TIMEOUT) from None
            if not isinstance(first, AuthMessage):
                await self._send_error("unauthorized", "the first frame must be auth")
                raise _Closed(CLOSE_UNAUTHORIZED)
            token = first.token
        return await self._verify(token)

    async def _verify(self, token: str) -> Identity:
        try:
            return self.tokens.verify(token)
        except ApiError as exc:
            await self._send_error("unauthorized", exc.message)
            raise _Closed(CLOSE_UNAUTHORIZED) from None

    async def _receive(self) -> AuthMessage | SyncMessage | None:
        """The next client message; None for one that was answered with an error frame."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise _Closed()
        raw: str | bytes | None = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        if len(raw) > MAX_FRAME:
            await self._send_error("frame_too_large", f"frames are limited to {MAX_FRAME} bytes")
            raise _Closed(CLOSE_BAD_REQUEST)
        try:
            return client_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._send_error("invalid_message", str(exc))
            return None

    async def _handle(self, message: AuthMessage | SyncMessage | None) -> None:
        match message:
            case AuthMessage(token=token):
                identity = await self._verify(token)
                if (identity.account_id,) != self.accounts:
                    await self._send_error(
                        "unauthorized", "a refreshed token must name the same account"
                    )
                    raise _Closed(CLOSE_UNAUTHORIZED)
                self._set_expiry(max(self.expires_at, identity.expires_at))
            case SyncMessage(versions=versions):
                # Read from PostgreSQL even if we believe the client is current: a lost
                # publish is exactly what sync exists to heal.
                try:
                    await self.hub.send_snapshot(self, self.accounts, known=versions)
                except Exception as exc:  # the database is down: keep the socket, say so
                    log.warning("sync failed: %r", exc)
                    await self._send_error("unavailable", "could not read the balance; retry")
            case None:
                pass

    def _set_expiry(self, expires_at: float) -> None:
        self.expires_at = expires_at
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        _spawn(self._close(CLOSE_UNAUTHORIZED, "token expired"))

    # ------------------------------------------------------------ sending (hub.Listener)

    def deliver(self, frame: Frame, *, force: bool = False) -> bool:
        """Write now if the socket keeps up, else keep only the newest per account.

        True when the frame was written at once (the hub counts those in frames_sent).
        """
        if self._closing:
            return False
        last = self._last.get(frame.account_id, -1)
        if frame.version < last or (frame.version == last and not force):
            return False
        self._last[frame.account_id] = frame.version
        transport = self._transport
        if (
            transport is not None
            and not self._pending
            and self._proto.writable.is_set()
            and not self._proto.close_sent
            and not transport.is_closing()
        ):
            transport.write(frame.wire)
            if self._stall_timer is not None:  # caught up since the last backlog
                self._stall_timer.cancel()
                self._stall_timer = None
            return True
        if frame.account_id in self._pending:
            metrics.frames_conflated.inc()
        elif self._stall_timer is None:  # a backlog starts
            self._backlog_since = time.monotonic()
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(self.settings.ws_send_timeout, self._check_stall)
        self._pending[frame.account_id] = frame
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return False

    def close(self, code: CloseCode) -> None:
        """Start closing with `code` (the hub's drain); returns at once."""
        if not self._closing:
            _spawn(self._close(code))

    def _writable(self) -> bool:
        proto = self._proto
        return (
            proto is not None
            and proto.writable.is_set()
            and not proto.close_sent
            and not proto.transport.is_closing()
        )

    async def _flush(self) -> None:
        try:
            while self._pending and not self._closing:
                transport = self._transport
                if transport is not None:
                    await self._proto.writable.wait()
                    if not self._writable():
                        return
                    frames = list(self._pending.values())
                    self._pending.clear()
                    transport.write(b"".join(f.wire for f in frames))
                else:
                    frames = list(self._pending.values())
                    self._pending.clear()
                    for frame in frames:
                        await self.ws.send_text(frame.data.decode())
                metrics.frames_sent.inc(len(frames))
        except Exception:  # the receive loop sees the disconnect and cleans up
            self._closing = True
        finally:
            self._flusher = None
            if self._caught_up() and self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

    def _caught_up(self) -> bool:
        """Nothing pending and the transport not paused: the backlog is over."""
        return not self._pending and (self._proto is None or self._writable())

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self._closing or self._caught_up():
            return
        stalled = time.monotonic() - self._backlog_since
        if stalled < self.settings.ws_send_timeout:
            delay = self.settings.ws_send_timeout - stalled
            self._stall_timer = asyncio.get_running_loop().call_later(delay, self._check_stall)
            return
        log.info("closing a socket of %s: backlogged for %.1f s", self.accounts, stalled)
        self._closing = True
        self._pending.clear()
        if self._proto is not None and self._transport is not None:
            # The transport is full, so an ASGI close would wait behind it: put the close
            # frame at the end of the buffer ourselves and abort if it is not taken in time.
            transport = self._transport
            transport.write(_close_frame(CLOSE_TOO_SLOW))
            self._proto.close_sent = True
            asyncio.get_running_loop().call_later(CLOSE_GRACE, _finish_close, transport)
        else:
            _spawn(self._close(CLOSE_TOO_SLOW))

    async def _send_error(self, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_text(encoder.encode(ErrorFrame(code, message)).decode())

    async def _close(self, code: CloseCode, reason: str = "") -> None:
        self._closing = True
        self._pending.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code.code, reason or code.name), CLOSE_GRACE)
        transport, proto = self._transport, self._proto
        if transport is not None and not transport.is_closing() and not proto.close_sent:
            transport.abort()  # could not even queue the close frame: the peer is stuck


def _finish_close(transport: asyncio.Transport) -> None:
    if transport.is_closing():
        return
    if transport.get_write_buffer_size():
        transport.abort()  # the peer never took its close frame
    else:
        transport.close()


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _uvicorn_transport(ws: WebSocket) -> tuple[Any, asyncio.Transport | None]:
    """uvicorn's websockets-sansio protocol and its transport, if that is what serves us."""
    owner = getattr(getattr(ws, "_receive", None), "__self__", None)
    transport = getattr(owner, "transport", None)
    if (
        owner is not None
        and type(owner).__name__ == "WebSocketsSansIOProtocol"
        # uvloop's TCPTransport is not an asyncio.Transport subclass: check the methods used.
        and all(hasattr(transport, m) for m in ("write", "abort", "get_write_buffer_size"))
        and isinstance(getattr(owner, "writable", None), asyncio.Event)
        and hasattr(owner, "close_sent")
    ):
        return owner, transport
    return None, None
