"""/openapi.json is exact: schemathesis, every check, against a real server whose catalog has
packages, pay-as-you-go, a price high enough to cap quantity, and both providers (through the
checkout stand-in). `make fuzz` runs the same test with many more examples. Every answer
has a schema (server/api/shapes.py), which schemathesis holds each response to; real
answers of every kind are checked against it directly too."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jsonschema_rs
import pytest

from server.api.routes import OPERATIONS
from server.auth import mint_token
from server.errors import (
    Problem,
    forbidden,
    hold_not_active,
    idempotency_conflict,
    insufficient_credits,
    internal_error,
    invalid_json,
    invalid_request,
    limit_reached,
    not_found,
    outcome_unknown,
    payload_too_large,
    provider_unavailable,
    rate_limited,
    spend_limit_reached,
    unauthorized,
    unavailable,
)
from tests.conftest import StartApp, key
from tests.payments.standin import StandIn
from tests.receiver import SECRET as RECEIVER_SECRET
from tests.receiver import Receiver

HERE = Path(__file__).parent
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CATALOG = {
    "prices": {"generate_image": 5, "render_film": 250_000},
    "packages": {
        "starter": {"credits": 100, "price": {"usd": 500, "eur": 450},
                    "dodo_product": "pdt_starter"},
        "plain": {"credits": 40, "price": {"usd": 300}},
    },
    "pay_as_you_go": {"credits_per_unit": {"usd": 20, "jpy": 3}, "min_amount": {"usd": 100}},
    "plans": {
        "pro": {"allowance": 1000, "rollover": 500, "prices": {"render_film": 400_000},
                "limits": {"generate_image": 50}},
        "free": {"allowance": 50, "period": "day"},
    },
}


async def test_schemathesis_finds_nothing(
    start_app: StartApp, stand_in: StandIn, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    app = await start_app(
        catalog_file=str(catalog), stripe_api_key="sk_test_standin",
        stripe_api_base=stand_in.url, dodo_api_key="dodo_test_standin",
        dodo_api_base=stand_in.url, checkout_return_urls=("https://app.example/",),
        rate_limits="me=100000/minute;checkout=100000/minute")
    account = f"fuzz-{key()[:8]}"
    async with app.client() as c:
        r = await c.post(f"/v1/accounts/{account}/credit",
                         json={"amount": 10**9, "kind": "grant", "idempotency_key": key()})
        assert r.status_code == 200, r.text
        r = await c.post(f"/v1/accounts/{account}/holds", json={
            "amount": 10, "reason": "fuzz", "idempotency_key": key(), "ttl_seconds": 3600})
        assert r.status_code == 201, r.text
        hold_id = r.json()["hold"]["id"]
    env = {
        **os.environ,
        "FUZZ_SERVICE_KEY": app.service_key,
        "FUZZ_USER_TOKEN": mint_token(app.settings.token_secret, account, 3600)[0],
        "FUZZ_HOLD_ID": hold_id,
        "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
        "PYTHONPATH": str(HERE.parent.parent),
    }
    # The server runs in this event loop: the fuzzer must be awaited, not waited for.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{app.base_url}/openapi.json", "--checks", "all",
        "--max-examples", str(EXAMPLES), "--seed", os.environ.get("FUZZ_SEED", "20261121"),
        "--no-color", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    await app.stop()  # its jobs (auto top-up of what the fuzzer configured) stop with it
    text = out.decode(errors="replace")
    summary = [line for line in text.splitlines() if " in " in line and "=====" in line]
    print(text[-3000:])
    assert proc.returncode == 0, text[-20000:]
    signed = sum(op.auth == "signature" for op in OPERATIONS)
    assert f"Tested: {len(OPERATIONS) - signed}" in text  # all but the signed webhooks
    assert summary and "failure" not in summary[-1], summary


@pytest.mark.parametrize("body", [
    {"amount": 7.0, "reason": "float", "idempotency_key": "k"},
    {"amount": 7, "reason": "float", "idempotency_key": "k", "metadata": {"n": 1.0}},
])
def test_an_integral_float_is_an_int(body: dict[str, object]) -> None:
    from server.messages import DebitRequest, decode_body

    value = decode_body(DebitRequest, json.dumps(body).encode())
    assert value.amount == 7 and type(value.amount) is int
    if value.metadata is not None:
        assert value.metadata == {"n": 1.0}  # opaque metadata is kept as sent


# ---------------------------------------------------------------- the answers' schemas


def _answer_schema(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    content = doc["paths"][path][method.lower()]["responses"][str(status)]["content"]
    schema: dict[str, Any] = content["application/json"]["schema"]
    return schema


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """`schema`, its references resolved in the document, with formats (date-time, uuid)
    checked as well."""
    return jsonschema_rs.validator_for(
        {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
         "components": doc["components"]}, validate_formats=True)


class Answers:
    """Real answers, each checked against what the document declares for its operation
    and status."""

    def __init__(self, doc: dict[str, Any], client: httpx.AsyncClient) -> None:
        self.doc = doc
        self.client = client
        self.seen: set[tuple[str, str, int]] = set()

    async def call(self, method: str, path: str, route: str, status: int,
                   **kwargs: Any) -> Any:
        r = await self.client.request(method, path, **kwargs)
        assert r.status_code == status, (method, path, r.text)
        body = r.json()
        errors = [f"{e.instance_path}: {e.message}" for e in _validator(
            self.doc, _answer_schema(self.doc, method, route, status)).iter_errors(body)]
        assert not errors, (method, path, status, errors, body)
        self.seen.add((method, route, status))
        return body


def test_the_shapes_agree_with_their_tables() -> None:
    from typing import get_args

    from server.api import shapes
    from server.config import EVENT_TYPES
    from server.errors import HTTP_STATUS
    from server.history import KINDS
    from server.outbox import STATUSES

    assert set(get_args(shapes.Kind)) == set(KINDS)
    assert set(get_args(shapes.EventType)) == set(EVENT_TYPES)
    assert set(get_args(shapes.EventStatus)) == set(STATUSES)
    assert set(shapes.ERRORS) == set(HTTP_STATUS)


async def test_real_answers_match_the_document(
    start_app: StartApp, stand_in: StandIn, receiver: Receiver, tmp_path: Path,
    db: asyncpg.Pool,
) -> None:
    """Every success answer has a schema, and a real answer of every operation but the
    signed webhooks (and refusals of each kind) validates against it."""
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({**CATALOG, "alerts": {"low_balance": 20}}))
    app = await start_app(
        catalog_file=str(catalog), stripe_api_key="sk_test_standin",
        stripe_api_base=stand_in.url, checkout_return_urls=("https://app.example/",),
        app_webhook_url=receiver.url,
        app_webhook_secret=RECEIVER_SECRET,
        app_webhook_events=("balance.low", "balance.depleted", "balance.recovered"),
        app_webhook_timeout=2.0, outbox_lease=3.0)
    account, other = f"shapes-{key()[:8]}", f"shapes-{key()[:8]}"
    acct = f"/v1/accounts/{account}"
    async with app.client() as c:
        doc = (await c.get("/openapi.json")).json()
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                status, answer = next(iter(op["responses"].items()))
                assert status.startswith("2"), (method, path)
                assert answer["content"]["application/json"]["schema"], (method, path)
                for refusal in list(op["responses"].values())[1:]:
                    assert refusal["content"]["application/json"]["schema"], (method, path)
        a = Answers(doc, c)
        A = "/v1/accounts/{account_id}"
        assert (await a.call("GET", acct, A, 200))["version"] == 0  # a new account reads as new
        await a.call("POST", acct, A, 200)
        await a.call("POST", f"{acct}/credit", A + "/credit", 200, json={
            "amount": 100, "kind": "grant", "idempotency_key": key(),
            "expires_at": "2999-01-01T00:00:00Z"})
        moved = await a.call("POST", f"{acct}/debit", A + "/debit", 200, json={
            "amount": 85, "reason": "render", "idempotency_key": key(),
            "metadata": {"job": [1, {"a": None}]}})
        assert moved["account"]["low"] is True  # 15 < 20: balance.low, delivered below
        await a.call("POST", f"{acct}/adjust", A + "/adjust", 200, json={
            "amount": 400, "reason": "goodwill", "actor": "ops", "idempotency_key": key()})
        await a.call("POST", f"{acct}/charge", A + "/charge", 200, json={
            "operation": "generate_image", "quantity": 2, "idempotency_key": key()})
        hold = await a.call("POST", f"{acct}/holds", A + "/holds", 201, json={
            "amount": 30, "reason": "job", "idempotency_key": key()})
        hold_id = hold["hold"]["id"]
        H = "/v1/holds/{hold_id}"
        captured = await a.call("POST", f"/v1/holds/{hold_id}/capture", H + "/capture", 200,
                                json={"amount": 10, "metadata": {"frames": 3}})
        assert captured["transaction"]["hold_id"] == hold_id
        refused = await a.call("POST", f"/v1/holds/{hold_id}/release", H + "/release", 409)
        assert refused["status"] == "captured"
        hold = await a.call("POST", f"{acct}/holds", A + "/holds", 201, json={
            "amount": 5, "reason": "job", "idempotency_key": key(), "ttl_seconds": 60})
        held = await a.call("GET", f"{acct}/holds", A + "/holds", 200)
        assert [h["id"] for h in held["holds"]] == [hold["hold"]["id"]]
        await a.call("POST", f"/v1/holds/{hold['hold']['id']}/release", H + "/release", 200)
        page = await a.call("GET", f"{acct}/transactions", A + "/transactions", 200,
                            params={"limit": 2})
        assert page["next"] is not None
        await a.call("GET", f"{acct}/transactions", A + "/transactions", 200,
                     params={"before": page["next"], "kind": "usage"})
        await a.call("GET", f"{acct}/usage", A + "/usage", 200, params={"group_by": "day"})
        await a.call("GET", f"{acct}/usage", A + "/usage", 200)
        await a.call("GET", f"{acct}/grants", A + "/grants", 200)
        await a.call("GET", f"{acct}/plan", A + "/plan", 200)  # no plan: nulls
        await a.call("PUT", f"{acct}/plan", A + "/plan", 200,
                     json={"plan": "pro", "idempotency_key": key()})
        await a.call("POST", f"{acct}/charge", A + "/charge", 200, json={
            "operation": "generate_image", "quantity": 50, "idempotency_key": key()})
        dashboard = await a.call("GET", f"{acct}/plan", A + "/plan", 200)
        assert dashboard["limits"]["generate_image"] == {"limit": 50, "used": 50}
        check = A + "/check"
        assert (await a.call("POST", f"{acct}/check", check, 200,
                             json={"amount": 1}))["allowed"] is True
        assert (await a.call("POST", f"{acct}/check", check, 200,
                             json={"amount": 10**12}))["error"] == "insufficient_credits"
        assert (await a.call("POST", f"{acct}/check", check, 200, json={
            "operation": "generate_image"}))["error"] == "limit_reached"
        limited = await a.call("POST", f"{acct}/charge", A + "/charge", 402, json={
            "operation": "generate_image", "idempotency_key": key()})
        assert limited["error"] == "limit_reached"
        poor = await a.call("POST", f"/v1/accounts/{other}/debit", A + "/debit", 402, json={
            "amount": 1, "reason": "x", "idempotency_key": key()})
        assert poor["error"] == "insufficient_credits"
        await a.call("POST", f"{acct}/debit", A + "/debit", 422, json={
            "amount": 0, "reason": "x", "idempotency_key": key()})
        await a.call("POST", f"{acct}/debit", A + "/debit", 400, content=b"{")
        same = key()
        await a.call("POST", f"{acct}/debit", A + "/debit", 200, json={
            "amount": 1, "reason": "x", "idempotency_key": same})
        await a.call("POST", f"{acct}/debit", A + "/debit", 409, json={
            "amount": 2, "reason": "x", "idempotency_key": same})
        await a.call("PUT", f"{acct}/alerts", A + "/alerts", 200, json={"low_balance": 5})
        await a.call("PUT", f"{acct}/auto-top-up", A + "/auto-top-up", 200, content=b"null")
        settings = await a.call("GET", f"{acct}/settings", A + "/settings", 200)
        assert (settings["low_balance"], settings["threshold_from"]) == (5, "account")
        assert settings["limits"] == {"spend": None}
        assert (await a.call("GET", f"{acct}/limits", A + "/limits", 200))["limits"] == {
            "spend": None}
        assert (await a.call("PUT", f"{acct}/limits", A + "/limits", 200, json={
            "spend": {"amount": 1, "period": "day"}}))["limits"]["spend"]["amount"] == 1
        capped = await a.call("POST", f"{acct}/debit", A + "/debit", 402, json={
            "amount": 1, "reason": "x", "idempotency_key": key()})
        assert capped["error"] == "limit_reached" and capped["period"] == "day"
        assert (await a.call("POST", f"{acct}/check", check, 200,
                             json={"amount": 1}))["period"] == "day"
        await a.call("PUT", f"{acct}/limits", A + "/limits", 422, json={
            "spend": {"amount": 1, "period": "week"}})
        settings = await a.call("GET", f"{acct}/settings", A + "/settings", 200)
        assert settings["limits"]["spend"]["period"] == "day"
        assert (await a.call("PUT", f"{acct}/limits", A + "/limits", 200, json={
            "spend": None}))["limits"] == {"spend": None}
        await a.call("POST", "/v1/tokens", "/v1/tokens", 200, json={"account_id": account})
        await a.call("GET", "/v1/prices", "/v1/prices", 200)
        assert (await a.call("GET", "/v1/catalog", "/v1/catalog", 200))["plans"]["pro"]
        await a.call("GET", "/v1/me", "/v1/me", 401)
        token = mint_token(app.settings.token_secret, account, 3600)[0]
        me = await a.call("GET", "/v1/me", "/v1/me", 200,
                          headers={"Authorization": f"Bearer {token}"})
        assert me["accounts"][0]["account_id"] == account
        await a.call("GET", "/v1/me/plan", "/v1/me/plan", 200,
                     headers={"Authorization": f"Bearer {token}"})
        await a.call("GET", "/v1/me/transactions", "/v1/me/transactions", 200,
                     headers={"Authorization": f"Bearer {token}"})
        buy = {"provider": "stripe", "success_url": "https://app.example/done"}
        await a.call("POST", f"{acct}/checkout", A + "/checkout", 201,
                     json={**buy, "package": "starter", "idempotency_key": key()})
        await a.call("POST", "/v1/me/checkout", "/v1/me/checkout", 201, json={
            **buy, "amount": 500, "currency": "usd", "idempotency_key": key()},
            headers={"Authorization": f"Bearer {token}"})
        for _ in range(500):  # the balance.low event, delivered, with its attempt
            events = await a.call("GET", "/v1/events", "/v1/events", 200,
                                  params={"status": "delivered", "limit": 200})
            mine = [e for e in events["events"] if e["account_id"] == account]
            if mine:
                break
            await asyncio.sleep(0.02)
        assert mine and mine[0]["attempt_log"], events
        retried = await a.call("POST", f"/v1/events/{mine[0]['id']}/retry",
                               "/v1/events/{event_id}/retry", 200)
        assert retried["status"] == "pending"
        await a.call("POST", "/v1/events/999999999999/retry",
                     "/v1/events/{event_id}/retry", 404)
        await a.call("GET", "/v1/events", "/v1/events", 200, params={"account_id": account})
        # The operator's routes: a payment under review, resolved (once), in both lists.
        pi = f"pi_{key()[5:21]}"
        assert await db.fetchval(
            "SELECT balance_record_unfulfilled('stripe', $1, 'checkout.session.completed', $2,"
            " 'metadata account_id is missing', '{}', NULL, 500, 'usd', NULL, 5)",
            f"evt_{pi}", pi) == "recorded"
        review = await a.call("GET", "/v1/payments", "/v1/payments", 200,
                              params={"status": "needs_review", "limit": 1})
        assert review["payments"][0]["payment_id"] == pi
        R = "/v1/payments/reviews/{review_id}"
        reviewed = f"/v1/payments/reviews/{review['payments'][0]['review']['id']}"
        await a.call("POST", f"{reviewed}/credit", R + "/credit", 200,
                     json={"account_id": account, "note": "ticket 1"})
        await a.call("POST", f"{reviewed}/dismiss", R + "/dismiss", 409, json={"note": "no"})
        await a.call("POST", "/v1/payments/reviews/999999999/dismiss", R + "/dismiss", 404,
                     json={"note": "no"})
        # A second payment under review, dismissed.
        assert await db.fetchval(
            "SELECT balance_record_unfulfilled('dodo', $1, 'payment.succeeded', NULL,"
            " 'partial refund without amount', '{}', NULL, NULL, NULL, NULL, NULL)",
            f"msg_{pi}") == "recorded"
        other = await a.call("GET", "/v1/payments", "/v1/payments", 200,
                             params={"status": "needs_review", "limit": 1})
        await a.call("POST", f"/v1/payments/reviews/{other['payments'][0]['review']['id']}"
                     "/dismiss", R + "/dismiss", 200, json={"note": "nothing to credit"})
        for status in ("credited", "resolved"):
            await a.call("GET", "/v1/payments", "/v1/payments", 200,
                         params={"status": status, "account_id": account})
        await a.call("GET", "/v1/accounts", "/v1/accounts", 200, params={"prefix": "shapes-"})
        audit = await a.call("GET", "/v1/audit", "/v1/audit", 200,
                             params={"account_id": account})
        assert {e["action"] for e in audit["entries"]} >= {
            "adjust", "credit", "plan", "alerts", "limits", "auto_top_up", "review_resolve"}
        await a.call("GET", f"{acct}/usage", A + "/usage", 200, params={"group_by": "day,reason"})
    await app.stop()
    answered = {(method, path) for method, path, status in a.seen if status < 300}
    assert answered == {(method.upper(), path) for path, methods in doc["paths"].items()
                        for method in methods if not path.startswith("/v1/webhooks/")}
    # Every error body errors.py can make is one the document declares.
    everything = _validator(doc, {"$ref": "#/components/schemas/Error"})
    for problem in (invalid_json(), unauthorized(), forbidden("admin", "worker", "spend"),
                    insufficient_credits(3, 1),
                    limit_reached("op", 5, 5, "2026-01-31T00:00:00.000000Z"), not_found(),
                    spend_limit_reached(100, 100, "2026-01-31T00:00:00.000000Z", "day"),
                    idempotency_conflict(), hold_not_active("expired"), payload_too_large(10),
                    rate_limited(1.5), invalid_request("amount: too big"), unavailable(),
                    internal_error(), provider_unavailable("stripe", "timeout"),
                    outcome_unknown(), Problem("method_not_allowed", "no")):
        assert everything.is_valid(problem.body()), problem.body()
    assert everything.is_valid({**internal_error().body(), "request_id": "r-1"})
