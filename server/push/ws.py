"""GET /v1/ws, one browser socket: handshake, first-frame auth, receive loop, conflated sends.

Frames from the hub are written by the socket's `FramesProtocol` (transport.py) as the same
pre-framed bytes for every socket. A socket that cannot keep up keeps at most one pending
frame per account (the newest); if it stays backlogged for `ws_send_timeout` it is closed
with 4509 and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from server import errors, metrics
from server.auth import Identity, TokenVerifier
from server.config import Settings
from server.errors import (
    CLOSE_AUTH_TIMEOUT,
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_MANY,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    CloseCode,
    Problem,
)
from server.limiter import RateLimits
from server.messages import AuthMessage, ErrorFrame, SyncMessage, client_decoder, encoder
from server.push.frame import Frame, close_frame
from server.push.hub import Hub, HubClosed, TooManySockets
from server.push.transport import EXTENSION, FramesProtocol

log = logging.getLogger("balance.ws")

PATH = "/v1/ws"
MAX_FRAME = 4096  # bytes; a browser only ever sends auth and sync
CLOSE_GRACE = 2.0  # seconds a too-slow socket gets to take its close frame before abort


class _Closed(Exception):
    """The peer went away, or we closed the socket."""

    def __init__(self, code: CloseCode | None = None, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The /v1/ws ASGI app: refuse other origins at the handshake, then run a Connection."""
    websocket = WebSocket(scope, receive, send)
    res: Any = websocket.app.state.resources  # server.resources.Resources
    settings: Settings = res.settings
    origin = websocket.headers.get("origin")
    if settings.allowed_origins and origin not in settings.allowed_origins:
        # Refused at the handshake: the browser sees HTTP 403, no socket is opened.
        await websocket.close(CLOSE_FORBIDDEN.code, CLOSE_FORBIDDEN.name)
        return
    limits: RateLimits = res.limits
    retry = await limits.hit("ws_connect", websocket.client.host if websocket.client else "")
    hub: Hub = res.hub
    if retry is None and hub.unauthenticated >= settings.ws_max_unauthenticated:
        retry = 1.0  # this process holds as many sockets waiting to authenticate as it takes
    if retry is not None:
        problem = errors.rate_limited(retry)
        await websocket.send_denial_response(JSONResponse(
            problem.body(), status_code=problem.status,
            headers={"Retry-After": str(math.ceil(retry))}))
        return
    await websocket.accept()
    proto = scope.get("extensions", {}).get(EXTENSION)
    if not isinstance(proto, FramesProtocol):
        log.error("/v1/ws needs serve.py's uvicorn configuration (FramesProtocol)")
        await websocket.close(CLOSE_INTERNAL.code, CLOSE_INTERNAL.name)
        return
    if not hub.accepting:
        await websocket.close(CLOSE_SERVICE_RESTART.code, CLOSE_SERVICE_RESTART.name)
        return
    await Connection(websocket, proto, hub, res.tokens, limits, settings).run()


class WebSocketFirst:
    """Wraps the app so /v1/ws sockets skip the middleware stack (HTTP is unaffected).

    Every ASGI frame between uvicorn and the endpoint stays alive as long as its socket:
    skipping starlette's middleware and router saves about 4 KiB per idle socket.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == PATH:
            scope["app"] = self.app
            await endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


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
        "accounts",
        "expires_at",
        "hub",
        "limits",
        "settings",
        "tokens",
        "ws",
    )

    def __init__(
        self, ws: WebSocket, proto: FramesProtocol, hub: Hub, tokens: TokenVerifier,
        limits: RateLimits, settings: Settings,
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.tokens = tokens
        self.limits = limits
        self.settings = settings
        self.accounts: tuple[str, ...] = ()
        self.expires_at = 0.0
        self._proto = proto
        self._last: dict[str, int] = {}  # account -> newest version written or pending
        self._pending: dict[str, Frame] = {}  # account -> newest frame not yet written
        self._backlog_since = 0.0
        self._flusher: asyncio.Task[None] | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._closing = False

    # ------------------------------------------------------------ the socket's life

    async def run(self) -> None:
        """Authenticate, register with the hub, then serve until the socket closes."""
        registered = False
        try:
            self.hub.unauthenticated += 1
            try:
                identity = await self._authenticate()
            finally:
                self.hub.unauthenticated -= 1
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
        except Problem as exc:
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
        except RecursionError:  # deep nesting in a field msgspec skips
            await self._send_error("invalid_message", "nested too deeply")
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
                retry = await self.limits.hit("ws_sync", str(id(self)), local=True)
                if retry is not None:  # each costs a database read: an error, not a close
                    await self._send_error("rate_limited", f"sync again in {retry:g} s")
                    return
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
        if not self._pending and self._proto.can_write():
            self._proto.write_frames(frame.wire)
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

    def buffered(self) -> int:
        """Bytes written to this socket that the peer has not taken yet."""
        return self._proto.buffered()

    async def _flush(self) -> None:
        try:
            while self._pending and not self._closing:
                if not await self._proto.wait_writable():
                    return
                frames = list(self._pending.values())
                self._pending.clear()
                self._proto.write_frames(b"".join(f.wire for f in frames))
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
        return not self._pending and self._proto.can_write()

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
        # The transport is full, so an ASGI close would wait behind it.
        self._proto.close_now(close_frame(CLOSE_TOO_SLOW), CLOSE_GRACE)

    async def _send_error(self, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_text(encoder.encode(ErrorFrame(code, message)).decode())

    async def _close(self, code: CloseCode, reason: str = "") -> None:
        self._closing = True
        self._pending.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code.code, reason or code.name), CLOSE_GRACE)
        self._proto.abort_unless_closing()  # could not even queue the close frame


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run a close in the background, keeping a reference until it ends (asyncio docs)."""
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
