"""The operator console at /console: its page, its static files, and its session.

The page calls the ordinary /v1 API with the session cookie (routes._authenticate reads
it); the routes here only open and close that session and mint the page's read-only
browser token for the live balance. Every answer under /console carries a strict CSP and
the other headers below, errors included.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, request_response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import errors
from server.api.http import read_body, resources
from server.auth import check_service_key
from server.console import session
from server.messages import AccountId, decode_body, encoder

log = logging.getLogger("balance.console")

STATIC = Path(__file__).parent / "static"
TOKEN_TTL = 5 * 60  # seconds: the page asks again before the socket's token runs out

HEADERS: dict[str, str] = {
    # connect-src 'self' covers the same origin's ws:// and wss:// (CSP Level 3).
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_RAW_HEADERS = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
_NO_STORE = {"cache-control": "no-store"}


class Login(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class TokenFor(msgspec.Struct, forbid_unknown_fields=True):
    account_id: AccountId


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=_NO_STORE)


def _current(request: Request) -> session.Session:
    """The request's console session (its key still configured), or 401."""
    cookie = request.cookies.get(session.COOKIE)
    if not cookie:
        raise errors.unauthorized("not signed in to the console")
    res = resources(request)
    current = session.verify(res.settings.token_secret, cookie)
    session.current_key(current, res.service_keys, res.settings.token_secret)
    return current


def _secure(request: Request) -> bool:
    # The server reads no forwarded headers; behind a TLS-terminating proxy the page's own
    # Origin (which a browser sets, and which only a browser's cookie jar cares about)
    # still says the page is served over https.
    origin = request.headers.get("origin", "")
    return request.url.scheme == "https" or origin.startswith("https://")


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=_NO_STORE)


async def sign_in(request: Request) -> Response:
    """Exchange an operator key (sent once, never stored by the page) for a session."""
    res = resources(request)
    client = request.client.host if request.client else "unknown"
    retry = await res.limits.hit("console_login", client)
    if retry is not None:
        raise errors.rate_limited(retry)
    body = decode_body(Login, await read_body(request))
    key = check_service_key(f"Bearer {body.key}", res.service_keys)
    token, opened = session.mint(res.settings.token_secret, key)
    log.info("console session opened for key %r (%s)", key.name, key.scope)
    response = _json(opened.json())
    response.set_cookie(session.COOKIE, token, max_age=session.TTL_SECONDS, path="/",
                        httponly=True, samesite="strict", secure=_secure(request))
    return response


async def whoami(request: Request) -> Response:
    return _json(_current(request).json())


async def sign_out(request: Request) -> Response:
    current = _current(request)
    session.check_csrf(current, request.method, request.headers.get(session.CSRF_HEADER))
    response = Response(status_code=204, headers=_NO_STORE)
    response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_secure(request))
    return response


async def session_route(request: Request) -> Response:
    match request.method:
        case "POST":
            return await sign_in(request)
        case "DELETE":
            return await sign_out(request)
        case _:
            return await whoami(request)


async def browser_token(request: Request) -> Response:
    """A read-only browser token for one account: the page's live balance socket. Any
    scope may watch; the token cannot buy (/v1/me/checkout refuses it)."""
    current = _current(request)
    session.check_csrf(current, request.method, request.headers.get(session.CSRF_HEADER))
    body = decode_body(TokenFor, await read_body(request))
    token, expires_at = resources(request).tokens.mint(body.account_id, TOKEN_TTL,
                                                       read_only=True)
    return _json(encoder.encode({"token": token, "expires_at": expires_at}))


class _Headed:
    """An ASGI app with the console's headers on every answer it sends. Errors raised by a
    request function are answered inside it (starlette's request_response), so they carry
    the headers too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_RAW_HEADERS]
            await send(message)

        await self.app(scope, receive, headed)


def _endpoint(handler: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    return _Headed(request_response(handler))


def routes() -> list[BaseRoute]:
    """The console's routes, mounted by create_app."""
    return [
        Route("/console", _endpoint(page), methods=["GET"]),
        Route("/console/session", _endpoint(session_route), methods=["GET", "POST", "DELETE"]),
        Route("/console/token", _endpoint(browser_token), methods=["POST"]),
        Mount("/console/static", _Headed(StaticFiles(directory=STATIC, check_dir=False))),
    ]
