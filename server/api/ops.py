"""For operators: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
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
from server.auth import check_service_key
from server.db import DB_DOWN

_NOT_READY: tuple[type[Exception], ...] = (*DB_DOWN, asyncpg.PostgresError)


async def healthz(request: Request) -> Response:
    """The process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when PostgreSQL answers and the broker delivers."""
    res = resources(request)
    checks: dict[str, bool] = {}
    try:
        await asyncio.wait_for(res.pool.fetchval("SELECT 1"), 2)
        checks["database"] = True
    except _NOT_READY:
        checks["database"] = False
    checks["broker"] = await res.hub.ready()
    ok = all(checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of server.metrics (behind BALANCE_METRICS_TOKEN if set)."""
    token = resources(request).settings.metrics_token
    if token is not None:
        check_service_key(request.headers.get("authorization"), (token.encode(),))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint, methods=["GET"]),
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
