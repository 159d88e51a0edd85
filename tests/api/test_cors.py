"""CORS: pages on BALANCE_ALLOWED_ORIGINS may call the browser API (the credit elements on
another origin); nobody may call the service-key routes cross-origin; without the setting
nothing answers cross-origin at all."""

from __future__ import annotations

import httpx

from server.api.cors import is_browser_path
from tests.conftest import RunningApp, StartApp, key

APP = "https://app.example.com"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


async def user_token(app: RunningApp, account: str) -> str:
    async with app.client() as c:
        r = await c.post("/v1/tokens", json={"account_id": account})
        assert r.status_code == 200
        token: str = r.json()["token"]
        return token


def test_the_browser_paths() -> None:
    assert [is_browser_path(p) for p in ("/v1/me", "/v1/me/checkout", "/v1/catalog")] == [True] * 3
    assert [is_browser_path(p) for p in ("/v1/meta", "/v1/accounts/a", "/v1/catalogs", "/")] == [
        False] * 4


async def test_an_allowed_origin_may_call_the_browser_api(start_app: StartApp,
                                                          account: str) -> None:
    app = await start_app(allowed_origins=(APP,))
    token = await user_token(app, account)
    async with httpx.AsyncClient(base_url=app.base_url) as c:
        pre = await c.options("/v1/me/checkout", headers={"Origin": APP, **PREFLIGHT})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == APP
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in pre.headers
        r = await c.get("/v1/me/plan", headers={"Origin": APP, "Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == APP
        assert "retry-after" in r.headers["access-control-expose-headers"].lower()
        # An error answer is readable by the page too (it explains a 401 or a 429).
        bad = await c.get("/v1/me", headers={"Origin": APP, "Authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert bad.headers["access-control-allow-origin"] == APP


async def test_other_origins_and_service_routes_get_no_cors(start_app: StartApp,
                                                             account: str) -> None:
    app = await start_app(allowed_origins=(APP,))
    async with httpx.AsyncClient(base_url=app.base_url) as c:
        pre = await c.options("/v1/me/checkout",
                              headers={"Origin": "https://evil.example", **PREFLIGHT})
        assert pre.status_code == 400
        assert "access-control-allow-origin" not in pre.headers
        # The service-key routes are not the browser's: no preflight, no CORS headers.
        pre = await c.options(f"/v1/accounts/{account}/debit", headers={"Origin": APP, **PREFLIGHT})
        assert pre.status_code == 405
        assert "access-control-allow-origin" not in pre.headers
        r = await c.post(f"/v1/accounts/{account}/debit", headers={
            "Origin": APP, "Authorization": f"Bearer {app.service_key}"},
            json={"amount": 1, "reason": "x", "idempotency_key": key()})
        assert "access-control-allow-origin" not in r.headers


async def test_without_allowed_origins_nothing_answers_cross_origin(app: RunningApp) -> None:
    async with httpx.AsyncClient(base_url=app.base_url) as c:
        pre = await c.options("/v1/me", headers={"Origin": APP, **PREFLIGHT})
        assert "access-control-allow-origin" not in pre.headers
        r = await c.get("/v1/catalog", headers={"Origin": APP})
        assert "access-control-allow-origin" not in r.headers
