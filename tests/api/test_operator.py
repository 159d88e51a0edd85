"""The operator API (issue 28): accounts by id prefix, the last changed first; the audit log
of every operator action, written with its change (not for a replay or a refusal); one
account's events; spending by day and operation."""

from __future__ import annotations

import asyncio
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
    for bad in ({"cursor": "not-a-cursor"}, {"limit": 0}, {"prefix": "x" * 129}):
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
