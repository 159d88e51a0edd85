"""Plans against a real PostgreSQL: periods made short and real by an `anchor` in the past
(a day plan anchored a day ago, less a second, ends in a second), never a fake clock."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from server.auth import mint_token
from tests.conftest import RunningApp, StartApp, age_plan, key

CATALOG = {
    "prices": {"generate_image": 5, "upscale": 2, "video": 40},
    "plans": {
        "daily": {"allowance": 100, "period": "day", "rollover": 30,
                  "prices": {"generate_image": 3}, "limits": {"video": 5}},
        "weekly": {"allowance": 500, "period": "week"},
        "monthly": {"allowance": 1000, "period": "month"},
        "nothing": {"allowance": 0, "period": "day"},
    },
}
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
async def shop(start_app: StartApp, tmp_path_factory: pytest.TempPathFactory) -> RunningApp:
    catalog = tmp_path_factory.mktemp("plans") / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    return await start_app(catalog_file=str(catalog), sweep_interval=0.2)


@pytest.fixture
async def api(shop: RunningApp) -> Any:
    async with shop.client() as c:
        yield c


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def put_plan(api: httpx.AsyncClient, account: str, plan: str | None,
                   anchor: datetime | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"plan": plan, "idempotency_key": key()}
    if anchor is not None:
        body["anchor"] = iso(anchor)
    r = await api.put(f"/v1/accounts/{account}/plan", json=body)
    assert r.status_code == 200, r.text
    account_json: dict[str, Any] = r.json()["account"]
    return account_json


async def history(api: httpx.AsyncClient, account: str) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/accounts/{account}/transactions", params={"limit": 200})
    assert r.status_code == 200
    rows: list[dict[str, Any]] = r.json()["transactions"]
    return rows[::-1]  # oldest first


async def wait_for(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)


async def test_period_edges_are_calendar_true(db: asyncpg.Pool) -> None:
    edges = await db.fetch(
        "SELECT balance__period_edge('2026-01-31T00:00Z', 'month', k) AS e"
        " FROM generate_series(-1, 4) k ORDER BY k")
    assert [r["e"].date().isoformat() for r in edges] == [
        "2025-12-31", "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]
    leap = await db.fetchval("SELECT balance__period_edge('2028-01-31T12:00Z', 'month', 1)")
    assert leap == datetime(2028, 2, 29, 12, tzinfo=UTC)
    for period, at, k in [("month", "2026-03-30T23:59Z", 1), ("month", "2026-03-31T00:00Z", 2),
                          ("week", "2026-02-07T00:00Z", 1), ("day", "2026-01-30T00:00Z", -1)]:
        found = await db.fetchval(
            "SELECT balance__period_index('2026-01-31T00:00Z', $1, $2::text::timestamptz)",
            period, at)
        assert found == k, (period, at)


async def test_a_plan_grants_its_allowance_until_the_period_ends(
    api: httpx.AsyncClient, account: str
) -> None:
    anchor = datetime(2026, 1, 31, tzinfo=UTC)
    acc = await put_plan(api, account, "monthly", anchor)
    now = datetime.now(UTC)
    start = await api.get(f"/v1/accounts/{account}/plan")
    plan = start.json()
    assert acc["plan"] == "monthly" and acc["balance"] == 1000
    assert ts(plan["period_start"]) <= now < ts(plan["period_end"]) == ts(acc["period_end"])
    # Anchored on the 31st: every period starts on the month's last day when it is shorter.
    assert ts(plan["period_start"]).day in (28, 29, 30, 31)
    assert (plan["allowance"], plan["allowance_remaining"]) == (1000, 1000)
    tx = (await history(api, account))[-1]
    assert (tx["kind"], tx["amount"], tx["metadata"]["plan"]) == ("allowance", 1000, "monthly")
    grants = (await api.get(f"/v1/accounts/{account}/grants")).json()["grants"]
    assert [(g["kind"], g["remaining"], g["priority"], g["expires_at"]) for g in grants] == [
        ("allowance", 1000, 10, plan["period_end"])]


async def test_put_plan_is_idempotent_and_checked(api: httpx.AsyncClient, account: str) -> None:
    body = {"plan": "weekly", "idempotency_key": key()}
    first = await api.put(f"/v1/accounts/{account}/plan", json=body)
    again = await api.put(f"/v1/accounts/{account}/plan", json=body)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    other = await api.put(f"/v1/accounts/{account}/plan",
                          json={**body, "plan": "monthly"})
    assert other.status_code == 409
    unknown = await api.put(f"/v1/accounts/{account}/plan",
                            json={"plan": "gold", "idempotency_key": key()})
    assert unknown.status_code == 422 and "gold" in unknown.json()["detail"]
    # The same plan again, without a new anchor, grants nothing more.
    same = await put_plan(api, account, "weekly")
    assert same["balance"] == 500
    assert [t["kind"] for t in await history(api, account)] == ["allowance"]


async def test_changing_or_removing_a_plan_expires_the_old_allowance(
    api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "daily")
    r = await api.post(f"/v1/accounts/{account}/debit",
                       json={"amount": 30, "reason": "x", "idempotency_key": key()})
    assert r.status_code == 200
    acc = await put_plan(api, account, "weekly")
    assert (acc["plan"], acc["balance"]) == ("weekly", 500)
    acc = await put_plan(api, account, None)
    assert (acc["plan"], acc["period_end"], acc["balance"]) == (None, None, 0)
    assert [(t["kind"], t["amount"]) for t in await history(api, account)] == [
        ("allowance", 100), ("usage", -30), ("expiry", -70), ("allowance", 500),
        ("expiry", -500)]
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert (plan["plan"], plan["allowance_remaining"]) == (None, 0)


async def test_allowance_is_spent_before_bought_credits(
    api: httpx.AsyncClient, account: str
) -> None:
    r = await api.post(f"/v1/accounts/{account}/credit",
                       json={"amount": 1000, "kind": "purchase", "idempotency_key": key()})
    assert r.status_code == 200
    await put_plan(api, account, "daily")
    for _ in range(3):
        r = await api.post(f"/v1/accounts/{account}/debit",
                           json={"amount": 20, "reason": "x", "idempotency_key": key()})
        assert r.status_code == 200
    grants = (await api.get(f"/v1/accounts/{account}/grants")).json()["grants"]
    assert [(g["kind"], g["remaining"]) for g in grants] == [("allowance", 40),
                                                             ("purchase", 1000)]
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert plan["allowance_remaining"] == 40


async def test_the_period_renews_by_itself_with_its_rollover_and_a_push(
    shop: RunningApp, api: httpx.AsyncClient, account: str
) -> None:
    # Period ends ~1.5 s from now.
    await put_plan(api, account, "daily", datetime.now(UTC) - DAY + timedelta(seconds=1.5))
    r = await api.post(f"/v1/accounts/{account}/debit",
                       json={"amount": 50, "reason": "x", "idempotency_key": key()})
    assert r.status_code == 200
    token = mint_token(shop.settings.token_secret, account, 600)[0]
    async with connect(f"{shop.ws_url}?token={token}") as ws:
        snapshot = json.loads(await ws.recv())
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["change"]["kind"] != "allowance":
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    # 50 unused: 30 roll over, 20 expire; the next 100 arrive.
    assert [(f["change"]["kind"], f["change"]["amount"]) for f in frames] == [
        ("expiry", -20), ("allowance", 100)]
    assert [f["version"] for f in frames] == [snapshot["version"] + 1, snapshot["version"] + 2]
    assert frames[-1]["balance"] == 130
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert plan["allowance_remaining"] == 130
    grants = (await api.get(f"/v1/accounts/{account}/grants")).json()["grants"]
    # What rolled over now expires with the new period.
    assert [(g["remaining"], g["expires_at"]) for g in grants] == [
        (30, plan["period_end"]), (100, plan["period_end"])]


async def test_a_server_down_for_three_periods_catches_up_in_order(
    shop: RunningApp, db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "daily", datetime.now(UTC) - timedelta(hours=1))
    # What the database holds when nobody renewed for three days: three periods older.
    await age_plan(db, account, 3)

    async def renewed() -> bool:
        found = [t for t in await history(api, account) if t["kind"] == "allowance"]
        return len(found) == 4
    await wait_for(renewed)
    rows = await history(api, account)
    # Per period: what is unused beyond the rollover (30) expires (one row per grant it
    # comes from), then the next allowance arrives.
    periods: list[list[int]] = []
    for t in rows:
        if t["kind"] == "allowance":
            periods.append([t["amount"]])
        else:
            assert t["kind"] == "expiry"
            periods[-1].append(t["amount"])
    assert [(p[0], sum(p[1:])) for p in periods] == [(100, -70), (100, -100), (100, -100),
                                                     (100, 0)]
    starts = [ts(t["metadata"]["period_start"]) for t in rows if t["kind"] == "allowance"]
    # The first row still names the period as it was granted (the ledger is append-only);
    # the three renewals follow the shifted one: three days ago + 1, + 2, + 3.
    assert [s - starts[0] for s in starts[1:]] == [-2 * DAY, -DAY, 0 * DAY]
    assert rows[-1]["balance_after"] == 130
    recorded = await db.fetchval("SELECT count(*) FROM plan_periods WHERE account_id = $1",
                                 account)
    assert recorded == 4


async def test_two_instances_renew_each_account_once(
    shop: RunningApp, start_app: StartApp, db: asyncpg.Pool, tmp_path: Path
) -> None:
    other = await start_app(catalog_file=shop.settings.catalog_file, sweep_interval=0.05)
    accounts = [f"race-{key()[5:17]}" for _ in range(40)]
    anchor = datetime.now(UTC) - DAY + timedelta(seconds=1.5)
    async with shop.client() as c:
        await asyncio.gather(*(put_plan(c, a, "daily", anchor) for a in accounts))
    try:
        async def all_renewed() -> bool:
            n = await db.fetchval("SELECT count(*) FROM transactions WHERE kind = 'allowance'"
                                  " AND account_id = ANY($1)", accounts)
            return bool(n >= 2 * len(accounts))
        await wait_for(all_renewed, 8)
        await asyncio.sleep(0.5)  # anything doubled would show by now
        per = await db.fetch(
            "SELECT account_id, count(*) AS n FROM transactions WHERE kind = 'allowance'"
            " AND account_id = ANY($1) GROUP BY account_id", accounts)
        assert sorted(r["n"] for r in per) == [2] * len(accounts)
    finally:
        await other.stop()


async def test_plan_prices_and_limits(api: httpx.AsyncClient, account: str) -> None:
    await put_plan(api, account, "daily")
    r = await api.post(f"/v1/accounts/{account}/charge",
                       json={"operation": "generate_image", "idempotency_key": key()})
    assert r.status_code == 200
    assert r.json()["transaction"]["amount"] == -3  # the plan's price, not the catalog's 5
    assert r.json()["transaction"]["metadata"]["unit_cost"] == 3
    await api.post(f"/v1/accounts/{account}/credit",
                   json={"amount": 1000, "kind": "purchase", "idempotency_key": key()})
    r = await api.post(f"/v1/accounts/{account}/charge",
                       json={"operation": "video", "quantity": 3, "idempotency_key": key()})
    assert r.status_code == 200
    before = (await api.get(f"/v1/accounts/{account}")).json()
    over = await api.post(f"/v1/accounts/{account}/charge",
                          json={"operation": "video", "quantity": 3, "idempotency_key": key()})
    assert over.status_code == 402
    body = over.json()
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert (body["error"], body["limit"], body["used"]) == ("limit_reached", 5, 3)
    assert body["resets_at"] == plan["period_end"]
    assert (await api.get(f"/v1/accounts/{account}")).json() == before  # nothing written
    assert plan["limits"] == {"video": {"limit": 5, "used": 3}}


async def test_300_concurrent_charges_pass_a_limit_exactly(
    shop: RunningApp, start_app: StartApp, api: httpx.AsyncClient, account: str
) -> None:
    # Two instances, each with several batches in flight: charges really run at once.
    other = await start_app(catalog_file=shop.settings.catalog_file, db_batch_inflight=8)
    await put_plan(api, account, "daily")
    await api.post(f"/v1/accounts/{account}/credit",
                   json={"amount": 100_000, "kind": "purchase", "idempotency_key": key()})
    r = await api.post(f"/v1/accounts/{account}/charge",
                       json={"operation": "video", "quantity": 4, "idempotency_key": key()})
    assert r.status_code == 200
    # One unit of the limit is left; 300 race for it.
    async with other.client() as api2:
        answers = await asyncio.gather(*(
            (api, api2)[i % 2].post(f"/v1/accounts/{account}/charge",
                                    json={"operation": "video", "idempotency_key": key()})
            for i in range(300)))
    await other.stop()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [402] * 299
    assert {a.json()["error"] for a in answers if a.status_code == 402} == {"limit_reached"}
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert plan["limits"]["video"] == {"limit": 5, "used": 5}
    usage = [t for t in await history(api, account) if t["kind"] == "usage"]
    assert sum(t["metadata"]["quantity"] for t in usage) == 5


async def test_check_answers_as_a_charge_would_and_writes_nothing(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "daily")
    before = (await api.get(f"/v1/accounts/{account}")).json()

    async def check(body: dict[str, Any]) -> dict[str, Any]:
        r = await api.post(f"/v1/accounts/{account}/check", json=body)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    assert await check({"operation": "generate_image", "quantity": 2}) == {
        "allowed": True, "cost": 6, "available": 100}
    assert await check({"amount": 101}) == {
        "allowed": False, "cost": 101, "available": 100, "error": "insufficient_credits",
        "required": 101}
    over = await check({"operation": "video", "quantity": 6})
    assert (over["allowed"], over["error"], over["limit"], over["used"]) == (
        False, "limit_reached", 5, 0)
    assert (await api.get(f"/v1/accounts/{account}")).json() == before
    bad = await api.post(f"/v1/accounts/{account}/check",
                         json={"operation": "video", "amount": 5})
    assert bad.status_code == 422
    # An account nobody named yet is checked as a new one, and still does not exist after.
    stranger = f"{account}-new"
    r = await api.post(f"/v1/accounts/{stranger}/check", json={"amount": 1})
    assert r.json() == {"allowed": False, "cost": 1, "available": 0,
                        "error": "insufficient_credits", "required": 1}
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE account_id = $1",
                             stranger) == 0


async def test_a_browser_reads_its_own_plan(shop: RunningApp, api: httpx.AsyncClient,
                                            account: str) -> None:
    await put_plan(api, account, "weekly")
    token = mint_token(shop.settings.token_secret, account, 600)[0]
    async with httpx.AsyncClient(base_url=shop.base_url) as browser:
        r = await browser.get("/v1/me/plan", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert (r.json()["plan"], r.json()["allowance_remaining"]) == ("weekly", 500)


async def test_a_plan_without_allowance_still_has_periods(
    api: httpx.AsyncClient, account: str
) -> None:
    acc = await put_plan(api, account, "nothing")
    assert (acc["plan"], acc["balance"]) == ("nothing", 0)
    assert acc["period_end"] is not None


async def test_a_change_within_the_same_period_grants_the_new_allowance(
    api: httpx.AsyncClient, account: str
) -> None:
    anchor = datetime.now(UTC) - timedelta(hours=1)
    await put_plan(api, account, "daily", anchor)
    acc = await put_plan(api, account, "weekly", anchor)  # the same period start
    assert (acc["plan"], acc["balance"]) == ("weekly", 500)
    again = await put_plan(api, account, "weekly", anchor)  # the same plan and anchor
    assert again["balance"] == 500 and again["version"] == acc["version"]
    assert [(t["kind"], t["amount"]) for t in await history(api, account)] == [
        ("allowance", 100), ("expiry", -100), ("allowance", 500)]
