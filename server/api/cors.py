"""CORS for the browser API, so pages on another origin can use it (the credit elements).

Only the routes a user token opens (`/v1/me*`, `/v1/catalog`) answer cross-origin, and only
to the origins in BALANCE_ALLOWED_ORIGINS, the list that already guards the WebSocket.
Service-key routes never do: a browser has no business holding that key. Credentials are
bearer tokens, never cookies, so no `Allow-Credentials`. Starlette's CORSMiddleware does
the protocol (preflights, `Vary: Origin`); this only picks which paths it sees.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

BROWSER_PREFIXES = ("/v1/me", "/v1/catalog")
PREFLIGHT_CACHE_SECONDS = 600


def is_browser_path(path: str) -> bool:
    """`/v1/me`, `/v1/me/...` and `/v1/catalog`: what a user token may call."""
    return any(path == p or path.startswith(p + "/") for p in BROWSER_PREFIXES)


class BrowserCors:
    """CORSMiddleware for the browser routes only; every other path goes straight through."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            # A 429's wait, a replayed checkout and the request's id (to quote in a support
            # request) are readable by the page too.
            expose_headers=["Retry-After", "Idempotent-Replayed", "X-Request-Id"],
            max_age=PREFLIGHT_CACHE_SECONDS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_browser_path(scope["path"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
