"""GET /v1/ws, one browser socket: admission, first-frame auth, the hub's frames, sync.

`Connection` is the WebSocket protocol class uvicorn runs for every upgrade (serve.py,
`Config(ws=Connection)`); it finds the process's resources in the lifespan state that
uvicorn hands each connection (`app_state[RESOURCES]`). An idle authenticated socket is
this one object and its parser: async work (the shared rate limit at the handshake, the
hub's subscribe and snapshot, a sync's database read) runs in a short task that ends.

Frames from the hub are the same pre-framed bytes for every socket. A socket that cannot
keep up keeps one pending frame (the newest: every frame is the whole state), is not read
meanwhile and gets no error frames (protocol.py); if it stays backlogged for
`ws_send_timeout` it is closed with 4509 and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.websockets import WebSocket
from websockets.http11 import Request, Response

from server import errors, logs, metrics
from server.auth import Identity
from server.errors import (
    CLOSE_AUTH_TIMEOUT,
    CLOSE_BAD_REQUEST,
    CLOSE_INTERNAL,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_MANY,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    CloseCode,
    Problem,
)
from server.messages import AuthMessage, ErrorFrame, SyncMessage, client_decoder, encoder
from server.push.frame import Frame
from server.push.hub import HubClosed, TooManySockets
from server.push.protocol import WebSocketProtocol
from server.resources import Resources

log = logging.getLogger("balance.ws")

PATH = "/v1/ws"
RESOURCES = "balance.resources"
"""The lifespan state's key for server.resources.Resources (app.py yields it)."""
MAX_FRAME = 4096  # bytes; a browser only ever sends auth and sync
# Frames a socket may send that are no message at all (not JSON, an unknown type) before it
# is closed 4400. The JS client sends none; each is answered with an error frame some 14
# times its size, which a client that reads slowly must not be able to ask for forever.
MAX_INVALID = 10
# Seconds an authenticated socket may wait for its subscription and snapshot; then 4500
# (reconnect). A herd of a thousand joins well inside it; a hung dependency does not.
JOIN_TIMEOUT = 10.0

# A socket's stages.
_OPENING, _AUTH, _JOINING, _LIVE, _CLOSED = range(5)


class Connection(WebSocketProtocol):
    """One browser socket of one account: the hub's listener (hub.Listener)."""

    __slots__ = (
        "__weakref__",  # tests see a closed socket freed without the cyclic collector
        "_backlog_since",
        "_invalid",
        "_pending",
        "_request_id",
        "_res",
        "_stage",
        "_stall",
        "_step",
        "_sync_due",
        "_timer",
        "_version",
        "account_id",
        "expires_at",
    )

    def setup(self, app_state: dict[str, Any]) -> None:
        self._res: Resources | None = app_state.get(RESOURCES)
        self._request_id = ""  # the upgrade request's X-Request-Id, or one made for it
        self._stage = _OPENING
        self.account_id = ""
        self.expires_at = 0.0
        self._version = -1  # the newest version written or pending
        self._pending: Frame | None = None  # the newest frame not yet written
        self._backlog_since = 0.0
        self._invalid = 0  # frames that were no message (MAX_INVALID)
        self._sync_due = 0.0  # the ws_sync limit's state (RateLimits.local)
        self._stall: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None  # auth deadline, then token expiry
        self._step: asyncio.Task[None] | None = None  # the async work under way, if any

    # ------------------------------------------------------------ admission

    def on_request(self, request: Request, response: Response) -> None:
        self._request_id = logs.request_id(request.headers.get("X-Request-Id"))
        response.headers["X-Request-Id"] = self._request_id
        res = self._res
        if res is None:  # no lifespan state: not served by serve.py's configuration
            log.error("/v1/ws needs the app's lifespan (serve.py's uvicorn configuration)")
            self._refuse(errors.unavailable("the server is starting"))
            return
        path, _, query = request.path.partition("?")
        if path != PATH:
            self._refuse(errors.not_found("no such route"))
            return
        allowed = res.settings.allowed_origins
        origins = request.headers.get_all("Origin")
        if allowed and (len(origins) != 1 or not (
                origins[0] in allowed or _same_origin(origins[0], request.headers.get("Host")))):
            # Refused at the handshake: the browser sees HTTP 403, no socket is opened.
            self.reject(403, encoder.encode({"error": "forbidden",
                                             "message": "this origin may not open a socket"}),
                        {"X-Request-Id": self._request_id})
            return
        token = parse_qs(query).get("token", [None])[-1]
        # The admission's task and its done callback copy the context: their lines carry the id.
        context = logs.REQUEST_ID.set(self._request_id)
        self._run(self._admit(res, response, token))
        logs.REQUEST_ID.reset(context)

    async def _admit(self, res: Resources, response: Response, token: str | None) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        host = peer[0] if peer else ""
        retry = await res.limits.hit("ws_connect", host)
        if retry is not None:
            self._refuse(errors.rate_limited(retry), {"Retry-After": str(math.ceil(retry))})
            return
        self.accept(response)
        if not self.open:
            return
        if not res.hub.accepting:
            self._close(CLOSE_SERVICE_RESTART)
            return
        self._stage = _AUTH
        if token is not None:  # authenticated now: it never waits in the lobby
            identity = self._verify(token)
            if identity is not None:
                self._authenticated(identity)
                await self._join()
        else:
            # Bounded per process and per address; a full lobby closes its oldest (lobby.py).
            res.lobby.enter(self, host)
            self._timer = asyncio.get_running_loop().call_later(
                res.settings.ws_auth_timeout, self._close, CLOSE_AUTH_TIMEOUT)

    def evict(self) -> None:
        """lobby.Waiting: a newer socket needs this one's place; it had its chance to
        authenticate, so the close is not waited on."""
        self.fail(CLOSE_AUTH_TIMEOUT.code, CLOSE_AUTH_TIMEOUT.name)

    def _refuse(self, problem: Problem, headers: dict[str, str] | None = None) -> None:
        self._stage = _CLOSED
        self.reject(problem.status, encoder.encode(problem.body()),
                    {**(headers or {}), "X-Request-Id": self._request_id})

    def _verify(self, token: str) -> Identity | None:
        assert self._res is not None
        try:
            return self._res.tokens.verify(token)
        except Problem as exc:
            self._send_error("unauthorized", exc.message)
            self._close(CLOSE_UNAUTHORIZED)
            return None

    def _authenticated(self, identity: Identity) -> None:
        """The socket has its account; frames that follow it are no longer the first."""
        assert self._res is not None
        self._res.lobby.leave(self)
        self._stage = _JOINING
        self.account_id = identity.account_id
        self._set_expiry(identity.expires_at)

    async def _join(self) -> None:
        """Register the authenticated socket with the hub (which sends the snapshot)."""
        res = self._res
        assert res is not None
        try:
            # Bounded: a broker or database that hangs must not hold a socket unanswered.
            async with asyncio.timeout(JOIN_TIMEOUT):
                await res.hub.register(self, (self.account_id,))
        except TooManySockets:
            self._stage = _CLOSED
            self._close(CLOSE_TOO_MANY)
            return
        except HubClosed:
            self._stage = _CLOSED
            self._close(CLOSE_SERVICE_RESTART)
            return
        except TimeoutError:
            self._stage = _CLOSED  # register() unregistered us
            metrics.ws_admission_failures.labels("join").inc()
            log.warning("a socket not joined within %g s: closed %d", JOIN_TIMEOUT,
                        CLOSE_INTERNAL.code)
            self._close(CLOSE_INTERNAL)
            return
        except Exception:
            self._stage = _CLOSED
            metrics.ws_admission_failures.labels("join").inc()
            raise  # _step_done logs it and closes with CLOSE_INTERNAL
        except BaseException:
            self._stage = _CLOSED
            raise
        if self._stage != _JOINING:  # closed while the snapshot was read
            res.hub.unregister(self, (self.account_id,))
            self._stage = _CLOSED
            return
        self._stage = _LIVE
        metrics.sockets_connected.inc()

    # ------------------------------------------------------------ messages

    def on_message(self, data: bytes) -> None:
        if len(data) > MAX_FRAME:
            self._send_error("frame_too_large", f"frames are limited to {MAX_FRAME} bytes")
            self._close(CLOSE_BAD_REQUEST)
            return
        try:
            message = client_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            message = None
            error = str(exc)
        except RecursionError:  # deep nesting in a field msgspec skips
            message, error = None, "nested too deeply"
        if self._stage == _AUTH:
            if isinstance(message, AuthMessage):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                identity = self._verify(message.token)
                if identity is not None:
                    self._authenticated(identity)
                    self._run(self._join())
            else:
                if message is None:
                    self._send_error("invalid_message", error)
                self._send_error("unauthorized", "the first frame must be auth")
                self._close(CLOSE_UNAUTHORIZED)
            return
        match message:
            case None:
                self._invalid += 1
                if self._invalid > MAX_INVALID:  # not read again, nor waited for
                    self._send_error("invalid_message", f"more than {MAX_INVALID} frames "
                                     "that are no message")
                    self.fail(CLOSE_BAD_REQUEST.code, CLOSE_BAD_REQUEST.name)
                    return
                self._send_error("invalid_message", error)
            case AuthMessage(token=token):
                identity = self._verify(token)
                if identity is None:
                    return
                if identity.account_id != self.account_id:
                    self._send_error("unauthorized", "a refreshed token must name the same account")
                    self._close(CLOSE_UNAUTHORIZED)
                    return
                self._set_expiry(max(self.expires_at, identity.expires_at))
            case SyncMessage(versions=versions):
                if self._stage != _LIVE:
                    return  # still joining: the snapshot on its way is the answer
                if self._step is not None and not self._step.done():
                    self._send_error("rate_limited", "a sync is already being answered")
                    return
                assert self._res is not None
                due, retry = self._res.limits.local("ws_sync", self._sync_due, time.monotonic())
                if retry is not None:  # each costs a database read: an error, not a close
                    self._send_error("rate_limited", f"sync again in {retry:g} s")
                    return
                self._sync_due = due
                self._run(self._sync(versions))

    async def _sync(self, versions: dict[str, int]) -> None:
        res = self._res
        assert res is not None
        # Read from PostgreSQL even if we believe the client is current: a lost publish is
        # exactly what sync exists to heal.
        try:
            await res.hub.send_snapshot(self, (self.account_id,), known=versions)
        except Exception as exc:  # the database is down: keep the socket, say so
            log.warning("sync failed: %r", exc)
            self._send_error("unavailable", "could not read the balance; retry")

    def _set_expiry(self, expires_at: float) -> None:
        self.expires_at = expires_at
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, expires_at - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._close(CLOSE_UNAUTHORIZED, "token expired")

    # ------------------------------------------------------------ sending (hub.Listener)

    def deliver(self, frame: Frame, *, force: bool = False) -> bool:
        """Write now if the socket keeps up, else keep only the newest.

        True when the frame was written at once (the hub counts those in frames_sent).
        """
        if not self.open:
            return False
        version = frame.version
        if version < self._version or (version == self._version and not force):
            return False
        self._version = version
        if self._pending is None and not self.paused:
            self.write(frame.wire)
            return True
        if self._pending is not None:
            metrics.frames_conflated.inc()
        self._pending = frame  # (on_paused started the stall timer)
        return False

    def pending(self) -> int:
        """Frames waiting for the socket to drain: 0 or 1."""
        return int(self._pending is not None)

    def on_paused(self) -> None:
        """A backlog starts: whatever the buffer holds (frames, pongs, error frames), the
        socket is closed if it is still over the high-water mark in `ws_send_timeout`."""
        if self._stall is None and self.open and self._res is not None:
            self._backlog_since = time.monotonic()
            self._stall = asyncio.get_running_loop().call_later(
                self._res.settings.ws_send_timeout, self._check_stall)

    def on_writable(self) -> None:
        frame, self._pending = self._pending, None
        if frame is not None and self.open:
            self.write(frame.wire)
            metrics.frames_sent.inc()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def close(self, code: CloseCode) -> None:
        """Start closing with `code` (the hub's drain); returns at once."""
        self._close(code)

    def _check_stall(self) -> None:
        self._stall = None
        if not self.open or not self.paused:
            return
        assert self._res is not None
        timeout = self._res.settings.ws_send_timeout
        stalled = time.monotonic() - self._backlog_since
        if stalled < timeout:
            self._stall = asyncio.get_running_loop().call_later(
                timeout - stalled, self._check_stall)
            return
        log.info("closing a socket of %s: backlogged for %.1f s", self.account_id, stalled)
        # The close frame queues behind the full buffer; the peer gets CLOSE_TIMEOUT to
        # take it before the connection is cut.
        self._close(CLOSE_TOO_SLOW)

    def _send_error(self, code: str, message: str) -> None:
        self.send_text(encoder.encode(ErrorFrame(code, message)))

    def _close(self, code: CloseCode, reason: str = "") -> None:
        self.close_socket(code.code, reason or code.name)

    # ------------------------------------------------------------ the socket's end

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1012, spread over drain_seconds so that the
        clients do not all reconnect to the next instance at once."""
        drain = self._res.settings.drain_seconds if self._res is not None else 0.0
        if self.open and drain > 0:
            asyncio.get_running_loop().call_later(
                random.uniform(0, drain), self._close, CLOSE_SERVICE_RESTART)
        else:
            super().shutdown()

    def on_close(self) -> None:
        res = self._res
        stage, self._stage = self._stage, _CLOSED
        self._pending = None
        for timer in (self._timer, self._stall):
            if timer is not None:
                timer.cancel()
        self._timer = self._stall = None
        if res is None:
            return
        if stage == _AUTH:
            res.lobby.leave(self)
        elif stage == _LIVE:
            metrics.sockets_connected.dec()
            res.hub.unregister(self, (self.account_id,))
        # _JOINING: _join sees the stage change and unregisters when register() returns.

    def _run(self, step: Coroutine[Any, Any, None]) -> None:
        """Run async work for this socket (one at a time). A step that outlives its socket
        finds it closed and writes nothing; _join unregisters what it registered."""
        task = asyncio.get_running_loop().create_task(step)
        self._step = task
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        if self._step is task:
            self._step = None
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            # Whatever failed, the client is answered: before the upgrade with an HTTP
            # error, after it with a close code it reconnects on (never left hanging).
            if self._stage == _OPENING:
                metrics.ws_admission_failures.labels("handshake").inc()
                log.error("websocket handshake failed", exc_info=exc)
                self._refuse(errors.internal_error())
                return
            if self._stage == _AUTH:  # upgraded, then failed checking its token
                metrics.ws_admission_failures.labels("auth").inc()
            log.error("websocket failed", exc_info=exc)
            self._close(CLOSE_INTERNAL)


async def misconfigured(websocket: WebSocket) -> None:
    """/v1/ws reached as ASGI: the server runs without serve.py's `ws=Connection`, so it
    is refused loudly (4500 and a log line naming the cause), never served half-working."""
    log.error("/v1/ws needs serve.py's uvicorn configuration (ws=Connection)")
    await websocket.accept()
    with contextlib.suppress(Exception):
        await websocket.close(CLOSE_INTERNAL.code, CLOSE_INTERNAL.name)


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether a page of this server opens the socket (the operator console): its own
    origin needs no place in BALANCE_ALLOWED_ORIGINS, which lists the app's pages."""
    return host is not None and origin.partition("://")[2] == host
