"""The console's session: an operator key exchanged once for a cookie that the /v1 API takes
as that key (its scope, while it is still configured), every mutation only with the
session's CSRF token; the page's headers; the read-only browser token."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.config import service_keys
from server.console import session
from tests.conftest import RunningApp, StartApp, key

ADMIN = "sk_admin_" + secrets.token_urlsafe(16)
SUPPORT = "sk_support_" + secrets.token_urlsafe(16)
KEYS = (f"ops:admin:{ADMIN}", f"support:read:{SUPPORT}")


Start = Callable[..., Awaitable[RunningApp]]


@pytest.fixture
async def start(start_app: StartApp) -> AsyncIterator[Start]:
    """Servers with these keys and counters of their own (the sign-in limit counts by
    address, and every test signs in from 127.0.0.1), stopped when the test ends: their
    jobs would otherwise go on renewing other tests' plans in the shared database and
    push the frames under this prefix, where those tests' sockets never listen."""
    apps: list[RunningApp] = []

    async def starter(*keys: str, **overrides: Any) -> RunningApp:
        overrides.setdefault("rate_limits", "console_login=1000/minute")
        app = await start_app(service_keys=service_keys(keys or KEYS),
                              channel_prefix=f"console-{uuid.uuid4().hex[:8]}", **overrides)
        apps.append(app)
        return app

    yield starter
    for app in apps:
        await app.stop()


@pytest.fixture
async def console(start: Start) -> RunningApp:
    return await start()


async def sign_in(client: httpx.AsyncClient, secret: str) -> dict[str, Any]:
    r = await client.post("/console/session", json={"key": secret})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def browser(app: RunningApp, **kwargs: Any) -> httpx.AsyncClient:
    """A client with a cookie jar and no service key, as the page is."""
    return httpx.AsyncClient(base_url=app.base_url, timeout=30, **kwargs)


async def test_a_good_key_opens_a_session_a_bad_one_nothing(console: RunningApp) -> None:
    async with browser(console) as client:
        r = await client.post("/console/session", json={"key": SUPPORT + "x"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert "set-cookie" not in r.headers and not client.cookies
        assert (await client.get("/console/session")).status_code == 401

        before = int(time.time())
        r = await client.post("/console/session", json={"key": ADMIN})
        assert r.status_code == 200
        body = r.json()
        assert body["name"] == "ops" and body["scope"] == "admin"
        assert len(body["csrf"]) >= 40
        assert 0 <= body["expires_at"] - before - session.TTL_SECONDS <= 5
        assert ADMIN not in r.text
        assert r.headers["cache-control"] == "no-store"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{session.COOKIE}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags  # plain http: a Secure cookie would never come back
        assert ADMIN not in cookie
        assert (await client.get("/console/session")).json() == body


async def test_the_cookie_is_secure_when_the_page_is_served_over_https(
    console: RunningApp,
) -> None:
    async with browser(console) as client:
        r = await client.post("/console/session", json={"key": ADMIN},
                              headers={"origin": "https://ops.example.com"})
        flags = {part.strip().lower() for part in r.headers["set-cookie"].split(";")[1:]}
        assert "secure" in flags and "httponly" in flags


async def test_every_console_answer_has_a_strict_csp(console: RunningApp) -> None:
    async with browser(console) as client:
        for path in ("/console", "/console/static/console.js", "/console/static/vendor/"
                     "uPlot.iife.min.js", "/console/session"):
            r = await client.get(path)
            assert r.status_code in (200, 401), (path, r.status_code)
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        page = (await client.get("/console")).text
        assert "<script" in page and "<script>" not in page  # no inline script
        assert "<style" not in page and " style=" not in page
        assert "https://" not in page  # no CDN


async def test_the_api_takes_the_cookie_and_mutations_need_the_csrf_token(
    console: RunningApp, account: str
) -> None:
    async with browser(console) as client:
        csrf = (await sign_in(client, ADMIN))["csrf"]
        r = await client.get(f"/v1/accounts/{account}")
        assert r.status_code == 200 and r.json()["balance"] == 0
        assert (await client.get("/v1/catalog")).status_code == 200  # service_or_user

        adjust = {"amount": 25, "reason": "goodwill", "actor": "console:ops",
                  "idempotency_key": key()}
        r = await client.post(f"/v1/accounts/{account}/adjust", json=adjust)
        assert r.status_code == 401 and "X-CSRF-Token" in r.json()["message"]
        r = await client.post(f"/v1/accounts/{account}/adjust", json=adjust,
                              headers={"x-csrf-token": csrf[:-1] + "A" if csrf[-1] != "A"
                                       else csrf[:-1] + "B"})
        assert r.status_code == 401
        assert (await client.get(f"/v1/accounts/{account}")).json()["balance"] == 0
        # What the backend does (a debit, a user's token) the console never does, even
        # with the token: a session's changes are the audited operator actions only.
        for path, body in ((f"/v1/accounts/{account}/debit",
                            {"amount": 1, "reason": "x", "idempotency_key": key()}),
                           ("/v1/tokens", {"account_id": account})):
            r = await client.post(path, json=body, headers={"x-csrf-token": csrf})
            assert r.status_code == 401 and "service key" in r.json()["message"], path

        r = await client.post(f"/v1/accounts/{account}/adjust", json=adjust,
                              headers={"x-csrf-token": csrf})
        assert r.status_code == 200, r.text
        assert (await client.get(f"/v1/accounts/{account}")).json()["balance"] == 25


async def test_a_read_session_reads_and_changes_nothing(
    console: RunningApp, account: str
) -> None:
    async with browser(console) as client:
        opened = await sign_in(client, SUPPORT)
        assert opened["scope"] == "read"
        assert (await client.get(f"/v1/accounts/{account}/transactions")).status_code == 200
        adjust = {"amount": 25, "reason": "x", "actor": "support", "idempotency_key": key()}
        r = await client.post(f"/v1/accounts/{account}/adjust", json=adjust,
                              headers={"x-csrf-token": opened["csrf"]})
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden" and r.json()["scope"] == "admin"
        r = await client.post(f"/v1/holds/{uuid.uuid4()}/release",
                              headers={"x-csrf-token": opened["csrf"]})
        assert r.status_code == 403 and r.json()["scope"] == "spend"
        assert (await client.get(f"/v1/accounts/{account}")).json()["balance"] == 0


async def test_a_session_ends_with_its_key_its_scope_or_its_secret(
    start: Start, account: str
) -> None:
    first = await start()
    async with browser(first) as client:
        await sign_in(client, SUPPORT)
        cookie = client.cookies[session.COOKIE]
    # The same token secret, the key gone; then the key back with another scope; then
    # another secret under the same name and scope (a rotation after a leak).
    rotated = "sk_support_" + secrets.token_urlsafe(16)
    for keys in ((f"ops:admin:{ADMIN}",), (f"ops:admin:{ADMIN}", f"support:admin:{SUPPORT}"),
                 (f"ops:admin:{ADMIN}", f"support:read:{rotated}")):
        app = await start(*keys)
        async with browser(app, cookies={session.COOKIE: cookie}) as client:
            r = await client.get(f"/v1/accounts/{account}")
            assert r.status_code == 401, r.text
            assert "sign in again" in r.json()["message"]
            assert (await client.get("/console/session")).status_code == 401
    async with browser(first, cookies={session.COOKIE: cookie}) as client:
        assert (await client.get(f"/v1/accounts/{account}")).status_code == 200


async def test_an_expired_or_forged_session_is_refused(
    console: RunningApp, account: str
) -> None:
    secret = console.settings.token_secret
    ops = console.settings.service_keys[0]
    expired, _ = session.mint(secret, ops, now=time.time() - session.TTL_SECONDS - 60)
    forged, _ = session.mint("x" * 48, ops)
    user_token = jwt.encode({"sub": "ops", "scope": "admin", "csrf": "c", "exp": 2**31,
                             "iss": "balance-server", "aud": "balance-server:user"},
                            secret, algorithm="HS256")
    for cookie in (expired, forged, user_token, "garbage"):
        async with browser(console, cookies={session.COOKIE: cookie}) as client:
            r = await client.get(f"/v1/accounts/{account}")
            assert r.status_code == 401, (cookie, r.text)
    async with browser(console, cookies={session.COOKIE: expired}) as client:
        assert "expired" in (await client.get("/console/session")).json()["message"]


async def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(console: RunningApp) -> None:
    async with browser(console) as client:
        csrf = (await sign_in(client, ADMIN))["csrf"]
        assert (await client.delete("/console/session")).status_code == 401
        assert (await client.get("/console/session")).status_code == 200
        r = await client.delete("/console/session", headers={"x-csrf-token": csrf})
        assert r.status_code == 204
        assert session.COOKIE not in client.cookies
        assert (await client.get("/console/session")).status_code == 401


async def test_sign_in_is_rate_limited_per_address(start: Start) -> None:
    app = await start(rate_limits="console_login=3/minute")
    async with browser(app) as client:
        answers = [(await client.post("/console/session", json={"key": f"wrong-{i}"}))
                   for i in range(3)]
        assert [r.status_code for r in answers] == [401, 401, 401]
        r = await client.post("/console/session", json={"key": ADMIN})
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        assert "set-cookie" not in r.headers


async def test_no_key_or_cookie_reaches_a_log_line(
    console: RunningApp, account: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with browser(console) as client:
            await client.post("/console/session", json={"key": ADMIN + "nope"})
            csrf = (await sign_in(client, ADMIN))["csrf"]
            cookie = client.cookies[session.COOKIE]
            await client.post(f"/v1/accounts/{account}/adjust", headers={"x-csrf-token": csrf},
                              json={"amount": 1, "reason": "r", "actor": "a",
                                    "idempotency_key": key()})
    # The server's lines (the test's own HTTP client logs what it sends, as it should).
    server = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records
                       if not r.name.startswith(("httpx", "httpcore")))
    assert "console session opened for key 'ops'" in server  # the log is captured
    for secret in (ADMIN, cookie, csrf):
        assert secret not in server


async def test_the_console_token_watches_but_cannot_buy(
    console: RunningApp, account: str
) -> None:
    async with browser(console) as client:
        csrf = (await sign_in(client, SUPPORT))["csrf"]
        r = await client.post("/console/token", json={"account_id": account})
        assert r.status_code == 401  # a mutation of the session: CSRF first
        r = await client.post("/console/token", json={"account_id": account},
                              headers={"x-csrf-token": csrf})
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert r.json()["expires_at"] <= time.time() + 5 * 60 + 5
    async with httpx.AsyncClient(base_url=console.base_url) as page, console.client() as backend:
        normal = (await backend.post("/v1/tokens", json={"account_id": account})).json()["token"]
        checkout = {"provider": "stripe", "success_url": "https://app.example/ok",
                    "package": "starter", "idempotency_key": key()}
        me = await page.get("/v1/me", headers={"authorization": f"Bearer {token}"})
        assert me.status_code == 200
        r = await page.post("/v1/me/checkout", json=checkout,
                            headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 401 and "read-only" in r.json()["message"]
        r = await page.post("/v1/me/checkout", json=checkout,
                            headers={"authorization": f"Bearer {normal}"})
        assert r.status_code not in (401, 403)  # no Stripe here: refused, but not as read-only


async def test_the_console_opens_its_socket_where_only_the_app_s_origins_are_allowed(
    start: Start, account: str
) -> None:
    app = await start(allowed_origins=("https://app.example",))
    async with browser(app) as client:
        csrf = (await sign_in(client, SUPPORT))["csrf"]
        token = (await client.post("/console/token", json={"account_id": account},
                                   headers={"x-csrf-token": csrf})).json()["token"]
    own = f"http://127.0.0.1:{app.settings.port}"
    async with connect(app.ws_url, origin=own) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "auth", "token": token}))
        frame = json.loads(await ws.recv())
        assert (frame["type"], frame["account_id"]) == ("balance", account)
    with pytest.raises(InvalidStatus) as refused:
        await connect(app.ws_url, origin="http://127.0.0.1:1")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403


async def test_the_audit_log_names_the_console_and_the_key(
    console: RunningApp, account: str
) -> None:
    async with browser(console) as client:
        csrf = (await sign_in(client, ADMIN))["csrf"]
        r = await client.post(f"/v1/accounts/{account}/adjust", headers={"x-csrf-token": csrf},
                              json={"amount": 3, "reason": "goodwill", "actor": "console:ops",
                                    "idempotency_key": key()})
        assert r.status_code == 200, r.text
    async with console.client() as backend:  # the ops key, the first configured
        r = await backend.post(f"/v1/accounts/{account}/credit",
                               json={"amount": 2, "kind": "grant", "idempotency_key": key()})
        assert r.status_code == 200, r.text
        entries = (await backend.get(f"/v1/audit?account_id={account}")).json()["entries"]
    assert [(e["actor"], e["action"]) for e in entries] == [("ops", "credit"),
                                                            ("console:ops", "adjust")]
