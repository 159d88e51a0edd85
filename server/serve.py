"""The one uvicorn configuration, used by the command line, the tests and the benchmarks."""

from __future__ import annotations

import logging
import re

import uvicorn
from starlette.applications import Starlette

from server.api.protocol import HttpProtocol
from server.config import Settings
from server.push.protocol import WIRE_LOG
from server.push.ws import MAX_FRAME, Connection


def config(
    app: Starlette, settings: Settings, *, log_level: str = "warning"
) -> uvicorn.Config:
    """How balance-server is served, whoever runs it."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        # No logging configuration of uvicorn's own: its lines reach the root logger, where
        # `balance-server serve` puts one handler for every line (server/logs.py).
        log_config=None,
        lifespan="on",
        # Each response in one send (api/protocol.py).
        http=HttpProtocol,
        # Our WebSocket protocol (push/ws.py): one object per socket, pre-framed writes, a
        # shutdown that closes sockets over drain_seconds. It never negotiates compression.
        ws=Connection,
        # A hard cap on what a socket can make us buffer; ws.py answers anything over
        # MAX_FRAME (4 KiB) with an error frame and 4400 before that.
        ws_max_size=16 * MAX_FRAME,
        ws_per_message_deflate=False,
        # uvicorn's keepalive is the ping: a socket whose pong is not back within another
        # interval is dropped.
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        proxy_headers=False,  # nothing reads the client address; one layer less per request
        # A log line per request costs more than the debit path can spare; each response
        # carries its X-Request-Id, each failure logs a line with it, and /metrics counts.
        access_log=False,
        backlog=4096,  # reconnect storms: thousands of sockets arrive at once
        timeout_graceful_shutdown=max(5, int(settings.drain_seconds) + 5),
    )


_TOKEN = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """uvicorn and websockets log a path with its query (`/v1/ws?token=…`): a user token
    must never reach a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args)
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = _TOKEN.sub(r"\1[redacted]", record.msg)
        return True


def server(
    app: Starlette, settings: Settings, *, log_level: str = "warning"
) -> uvicorn.Server:
    """A server for `app` (call `.run()`, or await `.serve()` inside a running loop)."""
    # websockets' parser logs the request line (with its query) at DEBUG.
    for name in ("uvicorn.error", "uvicorn.access", WIRE_LOG.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    return uvicorn.Server(config(app, settings, log_level=log_level))
