"""For operators: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
import math
import time

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server import metrics
from server.api import openapi
from server.api.http import resources
from server.auth import check_secret
from server.db import DB_DOWN
from server.resources import Resources

_NOT_READY: tuple[type[Exception], ...] = (*DB_DOWN, asyncpg.PostgresError)


async def healthz(request: Request) -> Response:
    """The process answers."""
    return JSONResponse({"status": "ok"})


class Readiness:
    """GET /readyz: ready when this instance can serve, that is when PostgreSQL answers.

    The broker's state is in the body (and in balance_broker_up), not in the status: every
    instance shares the one Redis, so dropping instances from a load balancer for its outage
    would turn a push delay (balances still move, sockets are resynced when it is back) into
    a full outage.

    Anyone may ask, as often as they like, and a probe takes a pool connection: so one probe
    runs at a time, every request meanwhile shares its answer, and an answer is reused for
    FRESH seconds. A flood of /readyz costs at most one database round trip a second.
    """

    FRESH = 1.0  # seconds

    def __init__(self) -> None:
        self._answer = False
        self._at = -math.inf  # monotonic time the answer was had
        self._probe: asyncio.Task[bool] | None = None

    async def endpoint(self, request: Request) -> Response:
        res = resources(request)
        database = await self.database(res)
        body = {"ready": database, "database": _state(database), "broker": _state(res.hub.ready())}
        return JSONResponse(body, status_code=200 if database else 503)

    async def database(self, res: Resources) -> bool:
        """Whether PostgreSQL answered a probe at most FRESH seconds old."""
        if time.monotonic() - self._at < self.FRESH:
            return self._answer
        if self._probe is None:
            self._probe = asyncio.create_task(self._run(res))
            self._probe.add_done_callback(self._done)
        # Shielded: a client that hangs up does not cancel the probe the others wait for.
        return await asyncio.shield(self._probe)

    async def _run(self, res: Resources) -> bool:
        try:
            await asyncio.wait_for(res.pool.fetchval("SELECT 1"), 2)
            answer = True
        except _NOT_READY:
            answer = False
        self._answer, self._at = answer, time.monotonic()
        return answer

    def _done(self, probe: asyncio.Task[bool]) -> None:
        self._probe = None
        if not probe.cancelled():
            probe.exception()  # retrieved, if every request that waited for it has gone


def _state(up: bool) -> str:
    return "ok" if up else "down"


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of server.metrics (behind BALANCE_METRICS_TOKEN if set)."""
    token = resources(request).settings.metrics_token
    if token is not None:
        check_secret(request.headers.get("authorization"), token)
    await metrics.database.refresh()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[Route]:
    """The operators' routes of one app (each with its own readiness probe and document)."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", Readiness().endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.Document().endpoint, methods=["GET"]),
    ]


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
