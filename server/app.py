"""create_app(settings): the lifespan owns the pool, broker, hub and sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from server import api, errors, metrics, openapi, webhooks, ws
from server.auth import TokenVerifier
from server.broker import make_broker
from server.config import Settings
from server.hub import Hub
from server.ledger import Ledger

log = logging.getLogger("balance.app")

# Errors that mean "PostgreSQL is not reachable": answered 503, and nothing was written
# because the transaction never committed.
DB_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    TimeoutError,
)


@dataclass
class Resources:
    """What handlers reach through `request.app.state.resources`."""

    settings: Settings
    pool: asyncpg.Pool
    ledger: Ledger
    tokens: TokenVerifier
    hub: Hub
    service_keys: tuple[bytes, ...]


async def _sweeper(res: Resources) -> None:
    """Release expired holds and expire lots within ~sweep_interval of their deadline."""
    last_cleanup = 0.0
    while True:
        try:
            frames = await res.ledger.sweep()
            for frame in frames:
                res.hub.publish(frame)
                what = frame.change.kind if frame.change else "unknown"
                metrics.sweeps.labels(what).inc()
            if time.monotonic() - last_cleanup > 3600:
                await res.ledger.forget_old_keys(res.settings.idempotency_retention_days)
                last_cleanup = time.monotonic()
            if frames:
                continue  # more may be due; sweep again at once
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the sweeper must outlive a database outage
            log.warning("sweep failed: %s", type(exc).__name__)
        await asyncio.sleep(res.settings.sweep_interval)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's RESET ALL on release: we never change session state, and the reset
    was a full extra round trip on every request (about a fifth of the debit path)."""


async def _warm_pool(pool: asyncpg.Pool, n: int) -> None:
    """Open a few connections ahead of traffic; a database that is down is not fatal."""
    with contextlib.suppress(*DB_DOWN):
        conns = [await pool.acquire() for _ in range(n)]
        for conn in conns:
            await pool.release(conn)


class DrainingServer(uvicorn.Server):
    """uvicorn closes every socket at once on SIGTERM; stop accepting, then drain ours with
    a reconnect code spread over `drain_seconds`, so clients do not all return at once."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        resources = getattr(getattr(self.config.app, "state", None), "resources", None)
        if isinstance(resources, Resources):
            await resources.hub.drain()
        await super().shutdown(sockets)


def create_app(
    settings: Settings, extra_routes: list[BaseRoute] | None = None
) -> ws.WebSocketFirst:
    """The ASGI application for these settings."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=0,
            max_size=settings.db_pool_size,
            timeout=5,
            command_timeout=30,
            server_settings={"application_name": "balance-server", "jit": "off"},
            reset=_keep_session,
        )
        assert pool is not None
        ledger = Ledger(pool, settings.welcome_credits, settings.db_batch_inflight)
        hub = Hub(make_broker(settings.redis_url), snapshot=ledger.snapshot, settings=settings)
        res = Resources(
            settings=settings,
            pool=pool,
            ledger=ledger,
            tokens=TokenVerifier(settings),
            hub=hub,
            service_keys=tuple(k.encode() for k in settings.service_keys),
        )
        app.state.resources = res
        await hub.start()
        await _warm_pool(pool, min(4, settings.db_pool_size))
        sweeper = asyncio.create_task(_sweeper(res), name="sweeper")
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's generations so full collections (pauses) stay short under many sockets.
        gc.freeze()
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await hub.stop()
            await pool.close()

    routes: list[BaseRoute] = [
        *api.routes(),
        *webhooks.routes(),
        WebSocketRoute("/v1/ws", ws.websocket_endpoint),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint, methods=["GET"]),
        *(extra_routes or []),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(MetricsMiddleware)],
        lifespan=lifespan,
        exception_handlers={
            errors.ApiError: api_error,
            HTTPException: http_error,
            **{exc: database_down for exc in DB_DOWN},
        },
    )
    return ws.WebSocketFirst(app)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when PostgreSQL answers and the broker delivers."""
    res: Resources = request.app.state.resources
    checks: dict[str, bool] = {}
    try:
        await asyncio.wait_for(res.pool.fetchval("SELECT 1"), 2)
        checks["database"] = True
    except (*DB_DOWN, asyncpg.PostgresError):
        checks["database"] = False
    checks["broker"] = await res.hub.ready()
    ok = all(checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    return JSONResponse({"error": code, "message": message}, status_code=exc.status_code)


async def database_down(request: Request, exc: Exception) -> Response:
    log.warning("database unreachable: %s", type(exc).__name__)
    return JSONResponse(errors.unavailable().body(), status_code=503)


class MetricsMiddleware:
    """Request counts and latency per route template (not per raw path: bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, object]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)  # type: ignore[arg-type]
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            key = (scope["method"], name, status)
            children = self._children.get(key)
            if children is None:  # labels() costs a lock and a dict build: once per key
                children = self._children[key] = (
                    metrics.http_requests.labels(scope["method"], name, str(status)),
                    metrics.http_latency.labels(name),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
