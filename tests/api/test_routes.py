"""The route table: what is served is what OpenAPI says, and the one account-id rule."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest
from starlette.routing import Route

from server.api.routes import OPERATIONS
from tests.conftest import RunningApp, key


async def test_openapi_is_the_route_table(app: RunningApp, client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    documented = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    asgi: Any = app.server.config.app
    served = {
        (method, route.path)
        for route in asgi.routes
        if isinstance(route, Route) and route.path.startswith("/v1/")
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert documented == served == {(op.method, op.path) for op in OPERATIONS}
    hold = spec["paths"]["/v1/accounts/{account_id}/holds"]["post"]
    assert "201" in hold["responses"]
    assert spec["paths"]["/v1/me"]["get"]["security"] == [{"userToken": []}]


@pytest.mark.parametrize("bad", ["alice%0A", "a%20b", "x" * 129, "%C3%A9t%C3%A9"])
async def test_bad_account_ids_are_422_and_write_nothing(
    client: httpx.AsyncClient, bad: str
) -> None:
    r = await client.post(f"/v1/accounts/{bad}/credit",
                          json={"amount": 1, "kind": "grant", "idempotency_key": key()})
    assert r.status_code == 422, r.text
    assert "A-Za-z0-9_.:@|-" in r.json()["message"]
    r = await client.post("/v1/tokens", json={"account_id": "alice\n"})
    assert r.status_code == 422


async def test_auth0_style_ids_work_everywhere(app: RunningApp, client: httpx.AsyncClient) -> None:
    account = f"auth0|{key()[-12:]}"
    r = await client.post(f"/v1/accounts/{account.replace('|', '%7C')}/credit",
                          json={"amount": 3, "kind": "grant", "idempotency_key": key()})
    assert r.status_code == 200, r.text
    assert r.json()["account"]["account_id"] == account
    token = (await client.post("/v1/tokens", json={"account_id": account})).json()["token"]
    async with httpx.AsyncClient(base_url=app.base_url) as browser:
        me = await browser.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["accounts"][0]["balance"] == 3


async def test_a_token_naming_a_bad_account_is_401(app: RunningApp) -> None:
    claims = {"sub": "alice\n", "exp": 2**31, "iss": "balance-server",
              "aud": "balance-server:user"}
    token = jwt.encode(claims, app.settings.token_secret, algorithm="HS256")
    async with httpx.AsyncClient(base_url=app.base_url) as browser:
        r = await browser.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "account id" in r.json()["message"]


async def test_a_405_says_what_is_allowed_and_paths_declare_their_rules(
    client: httpx.AsyncClient,
) -> None:
    r = await client.request("TRACE", "/v1/me")
    assert r.status_code == 405 and "GET" in r.headers["allow"].split(", ")
    assert r.json()["error"] == "method_not_allowed"
    spec = (await client.get("/openapi.json")).json()
    (param,) = spec["paths"]["/v1/accounts/{account_id}"]["get"]["parameters"]
    assert param["schema"]["pattern"].startswith("^[A-Za-z0-9_.:@|-]{1,128}$")
    hold, reason = spec["paths"]["/v1/holds/{hold_id}/release"]["post"]["parameters"]
    assert hold["schema"] == {"type": "string", "format": "uuid"}
    assert (reason["name"], reason["in"], reason["required"]) == (
        "X-Audit-Reason", "header", False)  # released from the console: audited
