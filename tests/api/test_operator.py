"""The operator API (issue 28): accounts by id prefix, the last changed first; the audit log
of every operator action, written with its change (not for a replay or a refusal); one
account's events; spending by day and operation."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import httpx

from tests.conftest import key


async def test_accounts_by_prefix_the_last_changed_first_in_pages(
    client: httpx.AsyncClient
) -> None:
    prefix = f"find-{uuid.uuid4().hex[:8]}-"
    ids = [f"{prefix}{n}" for n in range(5)]
    for account in ids:
        r = await client.post(f"/v1/accounts/{account}/credit",
                              json={"amount": 10, "kind": "grant", "idempotency_key": key()})
        assert r.status_code == 200
    await client.post(f"/v1/accounts/{ids[1]}/debit",
                      json={"amount": 1, "reason": "x", "idempotency_key": key()})
    expected = [ids[1], ids[4], ids[3], ids[2], ids[0]]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, str | int] = {"prefix": prefix, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/v1/accounts", params=params)
        assert r.status_code == 200, r.text
        seen += [a["account_id"] for a in r.json()["accounts"]]
        cursor = r.json()["next"]
        if cursor is None:
            break
    assert seen == expected
    r = await client.get("/v1/accounts", params={"prefix": ids[1]})
    assert [(a["account_id"], a["balance"]) for a in r.json()["accounts"]] == [(ids[1], 9)]
    r = await client.get("/v1/accounts", params={"prefix": f"{prefix}%"})
    assert r.json()["accounts"] == []  # a prefix is literal: no LIKE wildcards
    def crafted(*key: object) -> str:  # a cursor of the server's shape, not from it
        return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()

    for bad in ({"cursor": "not-a-cursor"}, {"limit": 0}, {"prefix": "x" * 129},
                {"cursor": crafted("2026-01-01T00:00:00+00:00", "a\u0000")},
                {"cursor": crafted("0001-01-01T00:00:00+05:00", "a")},
                {"cursor": crafted("2026-01-01T00:00:00", "a")},
                {"cursor": crafted("2026-01-01T00:00:00+00:00", "\ud800")}):
        r = await client.get("/v1/accounts", params=bad)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), bad


async def test_every_operator_action_is_audited_once_with_its_change(
    client: httpx.AsyncClient, account: str
) -> None:
    adjust = {"amount": 25, "reason": "refund for outage", "actor": "alice",
              "idempotency_key": key()}
    for _ in range(2):  # the replay is not a second action
        r = await client.post(f"/v1/accounts/{account}/adjust", json=adjust)
        assert r.status_code == 200
    tx = r.json()["transaction"]["id"]
    r = await client.post(f"/v1/accounts/{account}/adjust", json={
        **adjust, "amount": -1000, "idempotency_key": key()})
    assert r.status_code == 402  # refused: nothing happened, nothing is logged
    await client.post(f"/v1/accounts/{account}/credit",
                      json={"amount": 5, "kind": "grant", "reason": "promo",
                            "idempotency_key": key()})
    await client.put(f"/v1/accounts/{account}/alerts", json={"low_balance": 3})
    # Concurrent actions each log once.
    await asyncio.gather(*(client.post(f"/v1/accounts/{account}/credit", json={
        "amount": 1, "kind": "grant", "idempotency_key": key()}) for _ in range(5)))
    r = await client.get("/v1/audit", params={"account_id": account})
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    assert [e["action"] for e in entries] == ["credit"] * 5 + ["alerts", "credit", "adjust"]
    assert {e["actor"] for e in entries} == {"key1"}
    assert {e["account_id"] for e in entries} == {account}
    adjusted = entries[-1]
    assert adjusted["transaction_id"] == tx
    assert adjusted["detail"] == {"amount": 25, "reason": "refund for outage", "actor": "alice"}
    assert entries[-3]["detail"] == {"low_balance": 3}
    # Pages, newest first.
    r = await client.get("/v1/audit", params={"account_id": account, "limit": 3})
    page = r.json()
    r = await client.get("/v1/audit", params={"account_id": account, "before": page["next"]})
    assert [e["id"] for e in page["entries"] + r.json()["entries"]] == [e["id"] for e in entries]
    r = await client.get("/v1/audit", params={"limit": 1})
    assert len(r.json()["entries"]) == 1


async def test_spending_by_day_and_operation(client: httpx.AsyncClient, account: str) -> None:
    await client.post(f"/v1/accounts/{account}/credit",
                      json={"amount": 100, "kind": "grant", "idempotency_key": key()})
    for reason, amount in (("render", 3), ("render", 4), ("upscale", 10)):
        r = await client.post(f"/v1/accounts/{account}/debit",
                              json={"amount": amount, "reason": reason, "idempotency_key": key()})
        assert r.status_code == 200
    r = await client.get(f"/v1/accounts/{account}/usage", params={"group_by": "day,reason"})
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert [(g["reason"], g["amount"], g["count"]) for g in groups] == [
        ("render", 7, 2), ("upscale", 10, 1)]
    assert len({g["key"] for g in groups}) == 1 and len(groups[0]["key"]) == 10
    r = await client.get(f"/v1/accounts/{account}/usage", params={"group_by": "day"})
    assert [("reason" in g, g["amount"]) for g in r.json()["groups"]] == [(False, 17)]


async def test_a_reason_travels_to_the_audit_log_and_a_bad_one_changes_nothing(
    client: httpx.AsyncClient, account: str
) -> None:
    alerts = {"low_balance": 9}
    r = await client.put(f"/v1/accounts/{account}/alerts", json=alerts,
                         headers={"x-audit-reason": "%E2%9D%8C%00"})  # a NUL inside
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    assert "X-Audit-Reason" in r.json()["message"]
    r = await client.put(f"/v1/accounts/{account}/alerts", json=alerts,
                         headers={"x-audit-reason": "x" * 501})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    assert (await client.get(f"/v1/accounts/{account}/settings")).json()["low_balance"] is None
    r = await client.put(f"/v1/accounts/{account}/alerts", json=alerts,
                         headers={"x-audit-reason": "quieter for Zo%C3%AB%20(ticket%2012)"})
    assert r.status_code == 200, r.text
    entries = (await client.get("/v1/audit", params={"account_id": account})).json()["entries"]
    assert [(e["action"], e["detail"]) for e in entries] == [
        ("alerts", {"low_balance": 9, "reason": "quieter for Zoë (ticket 12)"})]
    # A backend releasing its own hold is not an operator: no entry.
    worker = f"{account}-w"
    await client.post(f"/v1/accounts/{worker}/credit",
                      json={"amount": 10, "kind": "grant", "idempotency_key": key()})
    placed = await client.post(f"/v1/accounts/{worker}/holds", json={
        "amount": 5, "reason": "job", "idempotency_key": key()})
    r = await client.post(f"/v1/holds/{placed.json()['hold']['id']}/release")
    assert r.status_code == 200
    entries = (await client.get("/v1/audit", params={"account_id": worker})).json()["entries"]
    assert [e["action"] for e in entries] == ["credit"]


async def test_settings_read_back_with_where_the_threshold_comes_from(
    client: httpx.AsyncClient, account: str
) -> None:
    async def settings() -> dict[str, object]:
        r = await client.get(f"/v1/accounts/{account}/settings")
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    fresh = await settings()  # an unknown account reads as new and is not created
    assert (fresh["low_balance"], fresh["auto_top_up"]) == (None, None)
    assert (await client.get("/v1/accounts", params={"prefix": account})).json()["accounts"] == []
    await client.put(f"/v1/accounts/{account}/alerts", json={"low_balance": 7})
    assert {k: v for k, v in (await settings()).items() if k != "auto_top_up"} == {
        "low_balance": 7, "threshold": 7, "threshold_from": "account",
        "limits": {"spend": None}}
    await client.put(f"/v1/accounts/{account}/alerts", json={"low_balance": None})
    after = await settings()
    assert after["low_balance"] is None and after["threshold_from"] in (None, "catalog")
