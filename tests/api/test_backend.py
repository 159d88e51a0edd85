"""Every backend and browser route, and every error code of the contract, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import PRICES, RunningApp, StartApp, key


async def credit(client: httpx.AsyncClient, account: str, amount: int, **extra: Any) -> Any:
    body = {"amount": amount, "kind": "grant", "idempotency_key": key(), **extra}
    r = await client.post(f"/v1/accounts/{account}/credit", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_new_account_springs_into_being(client: httpx.AsyncClient, account: str) -> None:
    r = await client.get(f"/v1/accounts/{account}")
    assert r.status_code == 200
    body = r.json()
    assert body["account_id"] == account
    assert (body["balance"], body["held"], body["available"], body["version"]) == (0, 0, 0, 0)
    assert set(body) == {"account_id", "balance", "held", "available", "version", "purchased",
                         "used", "updated_at", "plan", "period_end", "low"}
    # Born at 0, so depleted, as any account at 0 is (silently: API.md "Alerts").
    assert (body["plan"], body["period_end"], body["low"]) == (None, None, True)


async def test_welcome_credits_granted_once(
    start_app: StartApp, db: asyncpg.Pool, account: str
) -> None:
    """Reads never write: an unknown account reads as a new one would (its welcome credits
    included), and nothing is created until its first movement, which grants them once."""
    app = await start_app(welcome_credits=25)
    async with app.client() as c:
        first = await c.get(f"/v1/accounts/{account}")
        assert first.json()["balance"] == 25 and first.json()["version"] == 1
        for path in ("", "/transactions", "/usage", "/grants", "/plan"):
            assert (await c.get(f"/v1/accounts/{account}{path}")).status_code == 200, path
        assert (await c.get(f"/v1/accounts/{account}/transactions")).json() == {
            "transactions": [], "next": None}
        assert await db.fetchval(
            "SELECT count(*) FROM accounts WHERE account_id = $1", account) == 0
        r = await c.post(f"/v1/accounts/{account}/debit",
                         json={"amount": 5, "reason": "r", "idempotency_key": key()})
        assert r.status_code == 200 and r.json()["account"]["balance"] == 20
        assert r.json()["account"]["version"] == 2
        second = await c.get(f"/v1/accounts/{account}")
        assert second.json()["balance"] == 20
        history = (await c.get(f"/v1/accounts/{account}/transactions")).json()["transactions"]
    assert [(t["kind"], t["amount"]) for t in history] == [("usage", -5), ("grant", 25)]
    async with app.client() as c:  # or an explicit create, at signup: once, however often
        fresh = f"{account}-signup"
        for _ in range(2):
            r = await c.post(f"/v1/accounts/{fresh}")
            assert r.status_code == 200 and r.json()["balance"] == 25, r.text
        history = (await c.get(f"/v1/accounts/{fresh}/transactions")).json()["transactions"]
    assert [(t["kind"], t["amount"], t["reason"]) for t in history] == [
        ("grant", 25, "welcome credits")]
    await app.stop()


async def test_credit_then_debit(client: httpx.AsyncClient, account: str) -> None:
    credited = await credit(client, account, 100, reason="signup bonus")
    assert credited["transaction"]["kind"] == "grant"
    assert credited["transaction"]["amount"] == 100
    assert credited["account"]["balance"] == 100
    r = await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": 30, "reason": "generate_image", "idempotency_key": key(),
                                "metadata": {"job": "j1"}})
    assert r.status_code == 200
    t, a = r.json()["transaction"], r.json()["account"]
    assert (t["kind"], t["amount"], t["balance_after"], t["reason"]) == (
        "usage", -30, 70, "generate_image")
    assert t["metadata"] == {"job": "j1"}
    assert set(t) == {"id", "account_id", "kind", "amount", "balance_after", "version", "reason",
                      "metadata", "hold_id", "created_at"}
    assert (a["balance"], a["used"], a["version"]) == (70, 30, 2)
    assert t["version"] == a["version"]


async def test_insufficient_credits_is_402_and_writes_nothing(
    client: httpx.AsyncClient, account: str
) -> None:
    await credit(client, account, 10)
    k = key()
    r = await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": 11, "reason": "x", "idempotency_key": k})
    assert r.status_code == 402
    assert r.json() == {"error": "insufficient_credits", "message": r.json()["message"],
                        "required": 11, "available": 10}
    acct = (await client.get(f"/v1/accounts/{account}")).json()
    assert (acct["balance"], acct["version"]) == (10, 1)
    # The key was not burnt by the refusal: after a top-up the same request succeeds.
    await credit(client, account, 5)
    r = await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": 11, "reason": "x", "idempotency_key": k})
    assert r.status_code == 200 and r.json()["account"]["balance"] == 4


async def test_idempotent_replay_and_conflict(client: httpx.AsyncClient, account: str) -> None:
    await credit(client, account, 50)
    body = {"amount": 7, "reason": "x", "idempotency_key": key()}
    first = await client.post(f"/v1/accounts/{account}/debit", json=body)
    again = await client.post(f"/v1/accounts/{account}/debit", json=body)
    assert first.status_code == again.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    conflict = await client.post(f"/v1/accounts/{account}/debit", json={**body, "amount": 8})
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "idempotency_conflict"
    assert (await client.get(f"/v1/accounts/{account}")).json()["balance"] == 43


async def test_same_key_on_another_route_conflicts(client: httpx.AsyncClient, account: str) -> None:
    k = key()
    await client.post(f"/v1/accounts/{account}/credit",
                      json={"amount": 5, "kind": "grant", "idempotency_key": k})
    r = await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": 5, "reason": "x", "idempotency_key": k})
    assert r.status_code == 409


async def test_credit_kinds_and_counters(client: httpx.AsyncClient, account: str) -> None:
    await credit(client, account, 100, kind="purchase")
    await client.post(f"/v1/accounts/{account}/debit",
                      json={"amount": 40, "reason": "x", "idempotency_key": key()})
    r = await credit(client, account, 10, kind="refund", reason="job failed")
    a = r["account"]
    assert (a["balance"], a["purchased"], a["used"]) == (70, 100, 30)


async def test_adjust_signed(client: httpx.AsyncClient, account: str) -> None:
    r = await client.post(f"/v1/accounts/{account}/adjust",
                          json={"amount": 20, "reason": "support", "actor": "ops@x",
                                "idempotency_key": key()})
    assert r.status_code == 200
    assert r.json()["transaction"]["kind"] == "adjustment"
    assert r.json()["transaction"]["metadata"] == {"actor": "ops@x"}
    r = await client.post(f"/v1/accounts/{account}/adjust",
                          json={"amount": -21, "reason": "oops", "actor": "ops@x",
                                "idempotency_key": key()})
    assert r.status_code == 402
    r = await client.post(f"/v1/accounts/{account}/adjust",
                          json={"amount": -20, "reason": "oops", "actor": "ops@x",
                                "idempotency_key": key()})
    assert r.status_code == 200 and r.json()["account"]["balance"] == 0
    r = await client.post(f"/v1/accounts/{account}/adjust",
                          json={"amount": 0, "reason": "noop", "actor": "ops@x",
                                "idempotency_key": key()})
    assert r.status_code == 422 and "amount" in r.json()["detail"]


async def test_charge_uses_price_list(client: httpx.AsyncClient, account: str) -> None:
    assert (await client.get("/v1/prices")).json() == PRICES
    await credit(client, account, 100)
    r = await client.post(f"/v1/accounts/{account}/charge",
                          json={"operation": "generate_image", "quantity": 3,
                                "idempotency_key": key()})
    assert r.status_code == 200
    t = r.json()["transaction"]
    assert (t["amount"], t["reason"]) == (-15, "generate_image")
    assert t["metadata"]["unit_cost"] == 5 and t["metadata"]["quantity"] == 3
    r = await client.post(f"/v1/accounts/{account}/charge",
                          json={"operation": "teleport", "idempotency_key": key()})
    assert r.status_code == 422 and "operation" in r.json()["detail"]
    r = await client.post(f"/v1/accounts/{account}/charge",
                          json={"operation": "generate_video", "quantity": 3,
                                "idempotency_key": key()})
    assert r.status_code == 402 and r.json()["required"] == 120


async def test_hold_capture_partial_releases_rest(client: httpx.AsyncClient, account: str) -> None:
    await credit(client, account, 100)
    r = await client.post(f"/v1/accounts/{account}/holds",
                          json={"amount": 60, "reason": "render", "idempotency_key": key()})
    assert r.status_code == 201
    hold, acct = r.json()["hold"], r.json()["account"]
    assert hold["status"] == "active" and hold["amount"] == 60
    assert (acct["balance"], acct["held"], acct["available"]) == (100, 60, 40)
    refused = await client.post(f"/v1/accounts/{account}/debit",
                                json={"amount": 41, "reason": "x", "idempotency_key": key()})
    assert refused.status_code == 402 and refused.json()["available"] == 40
    too_much = await client.post(f"/v1/holds/{hold['id']}/capture", json={"amount": 61})
    assert too_much.status_code == 422
    r = await client.post(f"/v1/holds/{hold['id']}/capture", json={"amount": 25})
    assert r.status_code == 200
    t, acct = r.json()["transaction"], r.json()["account"]
    assert (t["kind"], t["amount"], t["hold_id"]) == ("usage", -25, hold["id"])
    assert (acct["balance"], acct["held"], acct["available"]) == (75, 0, 75)
    # All of it (60) is not what was captured (25): another capture, refused.
    again = await client.post(f"/v1/holds/{hold['id']}/capture", json={})
    assert again.status_code == 409 and again.json()["error"] == "hold_not_active"
    assert again.json()["status"] == "captured"
    same = await client.post(f"/v1/holds/{hold['id']}/capture", json={"amount": 25})
    assert same.status_code == 200 and same.headers["idempotent-replayed"] == "true"
    assert same.json()["transaction"] == t
    release = await client.post(f"/v1/holds/{hold['id']}/release")
    assert release.status_code == 409


async def test_hold_capture_all_and_release(client: httpx.AsyncClient, account: str) -> None:
    await credit(client, account, 50)
    h1 = (await client.post(f"/v1/accounts/{account}/holds",
                            json={"amount": 20, "reason": "a", "idempotency_key": key()})).json()
    h2 = (await client.post(f"/v1/accounts/{account}/holds",
                            json={"amount": 30, "reason": "b", "idempotency_key": key()})).json()
    assert h2["account"]["available"] == 0
    r = await client.post(f"/v1/accounts/{account}/holds",
                          json={"amount": 1, "reason": "c", "idempotency_key": key()})
    assert r.status_code == 402
    r = await client.post(f"/v1/holds/{h1['hold']['id']}/capture")
    assert r.status_code == 200 and r.json()["transaction"]["amount"] == -20
    r = await client.post(f"/v1/holds/{h2['hold']['id']}/release")
    assert r.status_code == 200
    assert r.json()["hold"]["status"] == "released"
    assert (r.json()["account"]["balance"], r.json()["account"]["held"]) == (30, 0)
    again = await client.post(f"/v1/holds/{h2['hold']['id']}/release")
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == r.json()


async def test_a_capture_or_release_sent_again_replays(
    client: httpx.AsyncClient, account: str
) -> None:
    """The hold's id is the key of its capture and release (an SDK retries them after a cut
    connection): the same resolution again answers as the first did, with the account as it
    is now; any other is still refused."""
    await credit(client, account, 100)

    async def place(amount: int) -> str:
        r = await client.post(f"/v1/accounts/{account}/holds", json={
            "amount": amount, "reason": "job", "idempotency_key": key()})
        assert r.status_code == 201, r.text
        hold_id: str = r.json()["hold"]["id"]
        return hold_id

    captured = await place(30)
    first = await client.post(f"/v1/holds/{captured}/capture", json={"metadata": {"run": 1}})
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    assert set(first.json()) == {"transaction", "hold", "account"}
    await client.post(f"/v1/accounts/{account}/debit",
                      json={"amount": 5, "reason": "meanwhile", "idempotency_key": key()})
    for body in ({}, {"amount": 30}, None):
        again = await client.post(f"/v1/holds/{captured}/capture", json=body)
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["transaction"] == first.json()["transaction"]
        assert again.json()["hold"] == first.json()["hold"]
        assert again.json()["account"]["balance"] == 65  # as it is now, after the debit
    other = await client.post(f"/v1/holds/{captured}/capture", json={"amount": 29})
    assert other.status_code == 409
    assert (other.json()["error"], other.json()["status"]) == ("hold_not_active", "captured")
    r = await client.post(f"/v1/holds/{captured}/release")
    assert r.status_code == 409 and r.json()["status"] == "captured"

    released = await place(20)
    first = await client.post(f"/v1/holds/{released}/release")
    again = await client.post(f"/v1/holds/{released}/release")
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    r = await client.post(f"/v1/holds/{released}/capture")
    assert r.status_code == 409 and r.json()["status"] == "released"
    acct = (await client.get(f"/v1/accounts/{account}")).json()
    assert (acct["balance"], acct["held"], acct["used"]) == (65, 0, 35)
    usage = (await client.get(f"/v1/accounts/{account}/transactions",
                              params={"kind": "usage"})).json()["transactions"]
    assert [t["amount"] for t in usage] == [-5, -30]  # one capture, written once


async def test_unknown_hold_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/holds/8d1f3c1e-1111-4a4a-9b9b-000000000000/capture")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.post("/v1/holds/not-a-uuid/release")
    assert r.status_code == 404


async def test_history_pages_and_filters(client: httpx.AsyncClient, account: str) -> None:
    await credit(client, account, 100)
    for i in range(5):
        await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": i + 1, "reason": f"r{i}", "idempotency_key": key()})
    page1 = (await client.get(f"/v1/accounts/{account}/transactions?limit=4")).json()
    assert [t["amount"] for t in page1["transactions"]] == [-5, -4, -3, -2]
    assert page1["next"] is not None
    page2 = (await client.get(
        f"/v1/accounts/{account}/transactions?limit=4&before={page1['next']}")).json()
    assert [t["amount"] for t in page2["transactions"]] == [-1, 100]
    assert page2["next"] is None
    grants = (await client.get(f"/v1/accounts/{account}/transactions?kind=grant")).json()
    assert [t["kind"] for t in grants["transactions"]] == ["grant"]
    for bad in ("limit=0", "limit=201", "limit=x", "kind=bogus", "before=-1"):
        r = await client.get(f"/v1/accounts/{account}/transactions?{bad}")
        assert r.status_code == 422, bad


async def test_usage_grouped(client: httpx.AsyncClient, account: str) -> None:
    await credit(client, account, 100)
    for reason, amount in (("img", 5), ("img", 5), ("video", 40)):
        await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": amount, "reason": reason, "idempotency_key": key()})
    by_reason = (await client.get(f"/v1/accounts/{account}/usage?group_by=reason")).json()
    assert by_reason == {"groups": [{"key": "img", "amount": 10, "count": 2},
                                    {"key": "video", "amount": 40, "count": 1}]}
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    by_day = (await client.get(f"/v1/accounts/{account}/usage",
                               params={"group_by": "day"})).json()
    assert by_day == {"groups": [{"key": today, "amount": 50, "count": 3}]}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    empty = (await client.get(f"/v1/accounts/{account}/usage", params={"since": future})).json()
    assert empty == {"groups": []}
    assert (await client.get(f"/v1/accounts/{account}/usage?group_by=week")).status_code == 422
    assert (await client.get(f"/v1/accounts/{account}/usage?since=yesterday")).status_code == 422
    # The range is bounded: a query reads every usage row in it.
    long_ago = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    for params in ({"since": long_ago},
                   {"since": long_ago, "until": datetime.now(UTC).isoformat()}):
        r = await client.get(f"/v1/accounts/{account}/usage", params=params)
        assert r.status_code == 422 and "366 days" in r.json()["detail"]


@pytest.mark.parametrize("auth", [None, "Bearer nope-not-a-key", "Basic abc", "Bearer sk_test_x"])
async def test_service_key_required(app: RunningApp, auth: str | None, account: str) -> None:
    headers = {"Authorization": auth} if auth else {}
    async with httpx.AsyncClient(base_url=app.base_url, headers=headers) as c:
        r = await c.post(f"/v1/accounts/{account}/debit",
                         json={"amount": 1, "reason": "x", "idempotency_key": key()})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert (await c.get(f"/v1/accounts/{account}")).status_code == 401


async def test_bad_json_is_400(client: httpx.AsyncClient, account: str) -> None:
    r = await client.post(f"/v1/accounts/{account}/debit", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 1.5, "reason": "x", "idempotency_key": "k"}, "amount"),
        ({"amount": 0, "reason": "x", "idempotency_key": "k"}, "amount"),
        ({"amount": 10**12 + 1, "reason": "x", "idempotency_key": "k"}, "amount"),
        ({"amount": "5", "reason": "x", "idempotency_key": "k"}, "amount"),
        ({"amount": 5, "reason": "x"}, "idempotency_key"),
        ({"amount": 5, "reason": "x", "idempotency_key": ""}, "idempotency_key"),
        ({"amount": 5, "reason": "x", "idempotency_key": "k" * 201}, "idempotency_key"),
        ({"amount": 5, "idempotency_key": "k"}, "reason"),
        ({"amount": 5, "reason": "x", "idempotency_key": "k", "surprise": 1}, "surprise"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    client: httpx.AsyncClient, account: str, body: dict[str, Any], field: str
) -> None:
    r = await client.post(f"/v1/accounts/{account}/debit", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request" and field in r.json()["detail"]
    assert (await client.get(f"/v1/accounts/{account}")).json()["version"] == 0


async def test_bad_account_id_is_422(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/accounts/" + "x" * 129)
    assert r.status_code == 422
    r = await client.get("/v1/accounts/bad%20id")
    assert r.status_code == 422


async def test_credit_expiry_validation(client: httpx.AsyncClient, account: str) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    r = await client.post(f"/v1/accounts/{account}/credit",
                          json={"amount": 5, "kind": "grant", "idempotency_key": key(),
                                "expires_at": past})
    assert r.status_code == 422 and "expires_at" in r.json()["detail"]
    r = await client.post(f"/v1/accounts/{account}/credit",
                          json={"amount": 5, "kind": "usage", "idempotency_key": key()})
    assert r.status_code == 422 and "kind" in r.json()["detail"]


async def test_body_over_64k_is_413(client: httpx.AsyncClient, account: str) -> None:
    body = {"amount": 1, "reason": "x", "idempotency_key": key(), "metadata": {"blob": "a" * 70000}}
    r = await client.post(f"/v1/accounts/{account}/debit", json=body)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(70):
            yield b"x" * 1024

    r = await client.post(f"/v1/accounts/{account}/debit", content=chunks())
    assert r.status_code == 413


async def test_unknown_route_is_404_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_database_down_is_503_and_writes_nothing(start_app: StartApp, account: str) -> None:
    from server.dev.servers import free_port

    app = await start_app(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    async with app.client() as c:
        r = await c.post(f"/v1/accounts/{account}/debit",
                         json={"amount": 1, "reason": "x", "idempotency_key": key()})
        assert r.status_code == 503 and r.json()["error"] == "unavailable"
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["database"] == "down"
        assert (await c.get("/healthz")).status_code == 200
    await app.stop()


async def test_tokens_and_browser_routes(client: httpx.AsyncClient, account: str,
                                         app: RunningApp) -> None:
    await credit(client, account, 42)
    r = await client.post("/v1/tokens", json={"account_id": account, "ttl_seconds": 60})
    assert r.status_code == 200
    token, expires_at = r.json()["token"], r.json()["expires_at"]
    assert abs(expires_at - (datetime.now(UTC).timestamp() + 60)) < 5
    async with httpx.AsyncClient(base_url=app.base_url,
                                 headers={"Authorization": f"Bearer {token}"}) as browser:
        me = (await browser.get("/v1/me")).json()
        assert me["accounts"][0]["account_id"] == account
        assert me["accounts"][0]["balance"] == 42
        assert [t["amount"] for t in me["transactions"]] == [42]
        page = (await browser.get("/v1/me/transactions?limit=1")).json()
        assert len(page["transactions"]) == 1
        # A user token is not a service key.
        assert (await browser.get(f"/v1/accounts/{account}")).status_code == 401
    assert (await client.post("/v1/tokens", json={"account_id": account,
                                                  "ttl_seconds": 86401})).status_code == 422
    async with httpx.AsyncClient(base_url=app.base_url,
                                 headers={"Authorization": "Bearer x.y.z"}) as bad:
        assert (await bad.get("/v1/me")).status_code == 401


async def test_operations_endpoints(client: httpx.AsyncClient, account: str) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    await client.post(f"/v1/accounts/{account}/debit",
                      json={"amount": 1, "reason": "x", "idempotency_key": key()})
    text = (await client.get("/metrics")).text
    assert "balance_http_requests_total" in text
    assert 'route="/v1/accounts/{account_id}/debit"' in text
    assert "balance_insufficient_credits_total" in text
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    debit_schema = spec["components"]["schemas"]["DebitRequest"]
    assert set(debit_schema["required"]) == {"amount", "reason", "idempotency_key"}
    assert "/v1/accounts/{account_id}/debit" in spec["paths"]


async def test_a_hold_placed_again_answers_the_hold_as_it_is_now(
    client: httpx.AsyncClient, account: str
) -> None:
    """The retry of work already paid for learns so from the placement's replay (the SDKs'
    reserve then refuses to run the work again): the same hold, with its status now."""
    await credit(client, account, 100)
    body = {"amount": 10, "reason": "job", "idempotency_key": key()}
    first = await client.post(f"/v1/accounts/{account}/holds", json=body)
    hold = first.json()["hold"]
    assert (first.status_code, hold["status"]) == (201, "active")
    await client.post(f"/v1/holds/{hold['id']}/capture", json={"amount": 4})
    again = await client.post(f"/v1/accounts/{account}/holds", json=body)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["hold"] == {**hold, "status": "captured", "captured": 4}
    assert again.json()["account"] == first.json()["account"]  # the answer it first gave
    assert (await client.get(f"/v1/accounts/{account}")).json()["held"] == 0


async def test_an_accounts_active_holds_are_listed_soonest_to_expire_first(
    client: httpx.AsyncClient, account: str
) -> None:
    await credit(client, account, 100)
    assert (await client.get(f"/v1/accounts/{account}/holds")).json() == {"holds": []}
    placed = []
    for ttl in (600, 60, 300):
        r = await client.post(f"/v1/accounts/{account}/holds", json={
            "amount": 10, "reason": f"job-{ttl}", "ttl_seconds": ttl, "idempotency_key": key()})
        placed.append(r.json()["hold"])
    await client.post(f"/v1/holds/{placed[2]['id']}/capture", json={})
    listed = (await client.get(f"/v1/accounts/{account}/holds")).json()["holds"]
    assert listed == [placed[1], placed[0]]  # active only, soonest to expire first
    acct = (await client.get(f"/v1/accounts/{account}")).json()
    assert acct["held"] == sum(h["amount"] for h in listed)
