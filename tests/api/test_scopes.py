"""Scoped service keys: a key does what its scope allows; anything else answers 403
`forbidden` naming the scope it needs, before the request is read, so nothing is written."""

from __future__ import annotations

import re
import secrets
import uuid

import httpx

from server.api.routes import OPERATIONS
from server.config import SCOPES, Scope, service_keys
from tests.conftest import StartApp

KEYS = {scope: f"sk_{scope}_{secrets.token_urlsafe(16)}" for scope in SCOPES}


async def test_each_key_does_what_its_scope_allows_and_nothing_else(
    start_app: StartApp, account: str
) -> None:
    app = await start_app(service_keys=service_keys(tuple(
        f"{scope}-key:{scope}:{secret}" for scope, secret in KEYS.items())))
    params = {"account_id": account, "hold_id": str(uuid.uuid4()), "event_id": "1",
              "review_id": "1"}
    refused: dict[str, list[str]] = {scope: [] for scope in SCOPES}
    async with httpx.AsyncClient(base_url=app.base_url) as client:
        for op in OPERATIONS:
            if op.auth not in ("service", "service_or_user"):
                continue
            path = re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], op.path)
            for scope, secret in KEYS.items():
                # No body: an allowed operation answers 422 (or reads), never 401 or 403.
                r = await client.request(op.method, path,
                                         headers={"authorization": f"Bearer {secret}"})
                if SCOPES.index(scope) < SCOPES.index(op.scope):
                    assert r.status_code == 403, (scope, op.method, op.path, r.text)
                    assert r.json()["error"] == "forbidden"
                    assert r.json()["scope"] == op.scope and scope in r.json()["message"]
                    refused[scope].append(op.handler.__name__)
                else:
                    assert r.status_code not in (401, 403), (scope, op.method, op.path, r.text)

        assert refused["admin"] == []
        assert set(refused["spend"]) == {
            "credit", "adjust", "set_plan", "set_alerts", "set_limits", "set_auto_top_up",
            "retry_event",
            "credit_review", "dismiss_review"}
        assert {"debit", "charge", "place_hold", "capture_hold", "mint_token",
                "credit"} <= set(refused["read"])

        # The worker's key spends but cannot mint credits; support reads only.
        def auth(scope: Scope) -> dict[str, str]:
            return {"authorization": f"Bearer {KEYS[scope]}"}

        credit = {"amount": 50, "kind": "grant", "idempotency_key": "c1"}
        r = await client.post(f"/v1/accounts/{account}/credit", json=credit,
                              headers=auth("spend"))
        assert r.status_code == 403 and r.json()["scope"] == "admin"
        r = await client.post(f"/v1/accounts/{account}/credit", json=credit,
                              headers=auth("admin"))
        assert r.status_code == 200
        r = await client.post(f"/v1/accounts/{account}/debit", headers=auth("spend"),
                              json={"amount": 5, "reason": "job", "idempotency_key": "d1"})
        assert r.status_code == 200
        r = await client.post(f"/v1/accounts/{account}/debit", headers=auth("read"),
                              json={"amount": 5, "reason": "job", "idempotency_key": "d2"})
        assert r.status_code == 403 and r.json()["scope"] == "spend"
        r = await client.get(f"/v1/accounts/{account}", headers=auth("read"))
        assert r.status_code == 200 and r.json()["balance"] == 45  # one credit, one debit
        wrong = await client.get(f"/v1/accounts/{account}",
                                 headers={"authorization": "Bearer sk_read_" + "x" * 22})
        assert wrong.status_code == 401

        # The document says each operation's scope, as its security requirement's role.
        doc = (await client.get("/openapi.json")).json()
        for op in OPERATIONS:
            if op.auth != "service":
                continue
            spec = doc["paths"][op.path][op.method.lower()]
            assert spec["security"] == [{"serviceKey": [op.scope]}], op.path
            assert ("403" in spec["responses"]) == (op.scope != "read"), op.path
