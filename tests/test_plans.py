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
        # Two plans of one period length, to switch between (issue 24).
        "free": {"allowance": 50, "period": "month", "limits": {"video": 2}},
        "pro": {"allowance": 1000, "period": "month", "rollover": 500,
                "prices": {"video": 1}, "limits": {"video": 5}},
        # A day plan whose period end the boundary test races.
        "edge": {"allowance": 1000, "period": "day", "rollover": 100,
                 "prices": {"video": 1}, "limits": {"video": 5}},
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


async def test_changing_or_removing_a_plan_expires_what_it_no_longer_gives(
    api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "pro")
    r = await api.post(f"/v1/accounts/{account}/debit",
                       json={"amount": 30, "reason": "x", "idempotency_key": key()})
    assert r.status_code == 200
    acc = await put_plan(api, account, "free")
    # Free gives the period 50, of which 30 are spent: 20 stay, the rest expires.
    assert (acc["plan"], acc["balance"]) == ("free", 20)
    acc = await put_plan(api, account, None)
    assert (acc["plan"], acc["period_end"], acc["balance"]) == (None, None, 0)
    assert [(t["kind"], t["amount"]) for t in await history(api, account)] == [
        ("allowance", 1000), ("usage", -30), ("expiry", -950), ("expiry", -20)]
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
    token = mint_token(shop.settings.token_secret, account, 600)[0]
    # Subscribed first: on a busy machine the setup may take longer than the period left.
    async with connect(f"{shop.ws_url}?token={token}") as ws:
        json.loads(await ws.recv())  # the snapshot
        # Period ends ~1.5 s from now.
        await put_plan(api, account, "daily", datetime.now(UTC) - DAY + timedelta(seconds=1.5))
        r = await api.post(f"/v1/accounts/{account}/debit",
                           json={"amount": 50, "reason": "x", "idempotency_key": key()})
        assert r.status_code == 200
        frames: list[dict[str, Any]] = []  # those after the debit's, to the renewal's grant
        debited = False
        while not frames or frames[-1]["change"]["kind"] != "allowance":
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame["change"]["kind"] == "usage":
                debited = True
            elif debited:
                frames.append(frame)
    # 50 unused: 30 roll over, 20 expire; the next 100 arrive.
    assert [(f["change"]["kind"], f["change"]["amount"]) for f in frames] == [
        ("expiry", -20), ("allowance", 100)]
    assert [f["version"] for f in frames] == [frames[0]["version"], frames[0]["version"] + 1]
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


async def test_a_plan_of_a_longer_period_gives_its_share_of_the_period_that_holds_now(
    api: httpx.AsyncClient, account: str
) -> None:
    anchor = datetime.now(UTC) - timedelta(hours=1)
    daily = await put_plan(api, account, "daily", anchor)
    acc = await put_plan(api, account, "weekly", anchor)
    # The day stays the period (weeks begin when it ends): a seventh of a week's allowance.
    assert (acc["plan"], acc["balance"]) == ("weekly", round(500 / 7))
    assert acc["period_end"] == daily["period_end"]
    again = await put_plan(api, account, "weekly", anchor)  # the same plan and anchor
    assert again["balance"] == 71 and again["version"] == acc["version"]
    assert [(t["kind"], t["amount"]) for t in await history(api, account)] == [
        ("allowance", 100), ("expiry", -29)]


# ---------------------------------------------------------------- issue 24: no allowance minted


async def debit(api: httpx.AsyncClient, account: str, amount: int) -> None:
    r = await api.post(f"/v1/accounts/{account}/debit",
                       json={"amount": amount, "reason": "x", "idempotency_key": key()})
    assert r.status_code == 200, r.text


async def charge(api: httpx.AsyncClient, account: str, operation: str,
                 quantity: int = 1) -> httpx.Response:
    return await api.post(f"/v1/accounts/{account}/charge", json={
        "operation": operation, "quantity": quantity, "idempotency_key": key()})


async def ledger(api: httpx.AsyncClient, account: str) -> list[tuple[str, int]]:
    return [(t["kind"], t["amount"]) for t in await history(api, account)]


async def waiting_for_a_lock(db: asyncpg.Pool) -> bool:
    """Whether a session of the test database waits for a lock (a movement queued)."""
    n = await db.fetchval("SELECT count(*) FROM pg_stat_activity"
                          " WHERE wait_event_type = 'Lock' AND datname = current_database()")
    return bool(n)


async def assert_reconciled(db: asyncpg.Pool, account: str) -> None:
    rows = await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1", account)
    assert rows == [], rows


async def test_spent_allowance_is_not_granted_again_by_a_downgrade_and_back(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "pro")
    await debit(api, account, 1000)
    down = await put_plan(api, account, "free")  # free's 50 is within the 1,000 spent
    up = await put_plan(api, account, "pro")
    assert (down["balance"], up["balance"]) == (0, 0)
    assert await ledger(api, account) == [("allowance", 1000), ("usage", -1000)]
    await assert_reconciled(db, account)


async def test_allowance_a_hold_reserves_through_a_downgrade_is_not_granted_again(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    """A hold keeps what it reserves of an allowance the downgrade expires (it moves into
    expired_held and the capture spends it): that counts as spent, so the way back grants
    nothing, round after round, and a period never spends more than its allowance."""
    await put_plan(api, account, "pro")
    await debit(api, account, 400)
    for round_ in range(3):
        r = await api.post(f"/v1/accounts/{account}/holds", json={
            "amount": 600, "reason": "job", "ttl_seconds": 600, "idempotency_key": key()})
        if round_ and r.status_code == 402:
            break  # nothing left to hold: the allowance is spent, as it must be
        assert r.status_code == 201, r.text
        await put_plan(api, account, "free")
        up = await put_plan(api, account, "pro")
        assert up["available"] == 0, up
        r = await api.post(f"/v1/holds/{r.json()['hold']['id']}/capture", json={})
        assert r.status_code == 200, r.text
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    spent = -sum(amount for kind, amount in await ledger(api, account) if kind == "usage")
    assert spent + plan["allowance_remaining"] <= 1000, (spent, plan)
    await assert_reconciled(db, account)


async def test_re_sending_a_plan_with_a_nudged_anchor_refills_nothing(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    anchor = datetime.now(UTC) - timedelta(days=2)
    first = await put_plan(api, account, "pro", anchor)
    await debit(api, account, 400)
    assert (await charge(api, account, "video", 3)).status_code == 200
    # Moved by a microsecond either way, or back about a month (its period would end within
    # days): the period that holds now keeps its end, its allowance and its usage.
    soon = datetime.now(UTC) + DAY - timedelta(days=31)
    for moved in (anchor + timedelta(microseconds=1), anchor - timedelta(microseconds=1), soon):
        again = await put_plan(api, account, "pro", moved)
        assert (again["balance"], again["period_end"]) == (597, first["period_end"])
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert (plan["allowance_remaining"], plan["limits"]["video"]["used"]) == (597, 3)
    assert await ledger(api, account) == [("allowance", 1000), ("usage", -400), ("usage", -3)]
    await assert_reconciled(db, account)


async def test_back_and_forth_ends_where_the_last_plan_alone_would_have(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await api.post(f"/v1/accounts/{account}/credit",
                   json={"amount": 5000, "kind": "purchase", "idempotency_key": key()})
    for plan, spend in [("pro", 300), ("free", 100), ("pro", 200), ("free", 0), ("pro", 0)]:
        await put_plan(api, account, plan)
        if spend:
            await debit(api, account, spend)
    # One pro allowance for the period, less the 500 spent of it (the 100 spent on free
    # came out of bought credits: free's 50 were already spent). What the changes granted,
    # less what they took back, is that one allowance.
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert plan["allowance_remaining"] == 1000 - 300 - 200
    rows = await ledger(api, account)
    assert sum(a for k, a in rows if k in ("allowance", "expiry")) == 1000
    balance = (await api.get(f"/v1/accounts/{account}")).json()["balance"]
    assert balance == 5000 - 100 + 500
    await assert_reconciled(db, account)


async def test_an_upgrade_grants_the_difference(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "free")
    await debit(api, account, 20)
    acc = await put_plan(api, account, "pro")
    assert acc["balance"] == 980  # 1,000 this period, of which 20 are spent
    assert await ledger(api, account) == [("allowance", 50), ("usage", -20), ("allowance", 950)]
    await assert_reconciled(db, account)


async def test_removing_and_restoring_a_plan_refills_nothing(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "pro")
    await debit(api, account, 600)
    removed = await put_plan(api, account, None)
    restored = await put_plan(api, account, "pro")
    assert (removed["balance"], restored["balance"]) == (0, 400)
    assert restored["period_end"] is not None
    await assert_reconciled(db, account)


async def test_limits_count_on_through_switches_nudges_and_removal(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    anchor = datetime.now(UTC) - timedelta(hours=5)
    await put_plan(api, account, "pro", anchor)
    await api.post(f"/v1/accounts/{account}/credit",
                   json={"amount": 5000, "kind": "purchase", "idempotency_key": key()})
    assert (await charge(api, account, "video", 3)).status_code == 200
    await put_plan(api, account, "free")
    over = await charge(api, account, "video")
    assert over.status_code == 402, over.text
    assert (over.json()["used"], over.json()["limit"]) == (3, 2)
    await put_plan(api, account, "pro", anchor + timedelta(microseconds=1))
    assert (await charge(api, account, "video", 2)).status_code == 200
    await put_plan(api, account, None)
    await put_plan(api, account, "pro")
    over = await charge(api, account, "video")
    assert over.status_code == 402, over.text
    assert (over.json()["used"], over.json()["limit"]) == (5, 5)
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert plan["limits"] == {"video": {"limit": 5, "used": 5}}
    await assert_reconciled(db, account)


async def test_a_new_anchor_takes_effect_when_the_period_ends(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    # Room for the two calls below before the period ends, even on a loaded machine.
    anchor = datetime.now(UTC) - DAY + timedelta(seconds=3)
    first = await put_plan(api, account, "daily", anchor)
    # Twelve hours later: the period that holds now keeps its end and its allowance.
    moved = await put_plan(api, account, "daily", anchor + timedelta(hours=12))
    assert (moved["balance"], moved["period_end"]) == (100, first["period_end"])

    async def renewed() -> bool:
        return any(k == "allowance" for k, _ in (await ledger(api, account))[1:])
    await wait_for(renewed, 10.0)
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    # The next period runs to the new anchor's next edge, half a day: half an allowance.
    assert ts(plan["period_start"]) == ts(first["period_end"])
    assert ts(plan["period_end"]) == anchor + DAY + timedelta(hours=12)
    assert await ledger(api, account) == [("allowance", 100), ("expiry", -70), ("allowance", 50)]
    await assert_reconciled(db, account)


async def test_a_plan_restored_after_a_gap_starts_no_earlier_than_the_last_period_ended(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    anchor = datetime.now(UTC) - DAY + timedelta(seconds=3)
    first = await put_plan(api, account, "daily", anchor)
    await put_plan(api, account, None)
    await asyncio.sleep((ts(first["period_end"]) - datetime.now(UTC)).total_seconds() + 0.2)
    # The week anchored at the same time began before that period ended: only the rest of
    # it, six days of seven, is new.
    acc = await put_plan(api, account, "weekly", anchor)
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    assert ts(plan["period_start"]) == ts(first["period_end"])
    assert ts(acc["period_end"]) == anchor + 7 * DAY
    assert acc["balance"] == round(500 * 6 / 7)
    await assert_reconciled(db, account)


async def test_300_charges_at_the_period_end_count_in_the_new_period(
    shop: RunningApp, start_app: StartApp, db: asyncpg.Pool, api: httpx.AsyncClient,
    account: str,
) -> None:
    other = await start_app(catalog_file=shop.settings.catalog_file, db_batch_inflight=8)
    acc = await put_plan(api, account, "edge", datetime.now(UTC) - DAY + timedelta(seconds=4))
    period_end = ts(acc["period_end"])
    # The old period: its limit used up, 995 of its allowance unused (100 of it rolls over).
    assert (await charge(api, account, "video", 5)).status_code == 200
    old_start = await db.fetchval("SELECT period_start FROM accounts WHERE account_id = $1",
                                  account)
    async with db.acquire() as conn, other.client() as api2:
        # Every renewer skips a locked account (SKIP LOCKED) and the charges wait for it:
        # the period ends, and the burst arrives, before any renewal could run.
        lock = conn.transaction()
        await lock.start()
        try:
            await conn.execute("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE",
                               account)
            left = (period_end - datetime.now(UTC)).total_seconds()
            assert left > 0, "the setup took longer than the period had left"
            await asyncio.sleep(left + 0.05)
            clients = (api, api2)
            burst = asyncio.gather(*(
                charge(clients[i // 2 % 2], account, "video") if i % 2 else
                clients[i // 2 % 2].post(f"/v1/accounts/{account}/debit", json={
                    "amount": 10, "reason": "x", "idempotency_key": key()})
                for i in range(300)))
            await wait_for(lambda: waiting_for_a_lock(db))
            await asyncio.sleep(0.2)
        finally:
            await lock.rollback()
        answers = await burst
    await other.stop()
    refusals = {a.json()["error"] for a in answers if a.status_code != 200}
    assert refusals <= {"limit_reached", "insufficient_credits"}
    videos = [a for i, a in enumerate(answers) if i % 2 and a.status_code == 200]
    # The old period's limit is not passed: its usage stays at 5, and the new one allows 5.
    used = {r["period_start"]: r["used"] for r in await db.fetch(
        "SELECT period_start, used FROM plan_usage WHERE account_id = $1", account)}
    assert used[old_start] == 5
    assert len(videos) <= 5 and sum(used.values()) == 5 + len(videos)
    # The old allowance beyond the rollover expired before any of the burst was spent.
    rows = await db.fetch("SELECT id, kind, amount FROM transactions WHERE account_id = $1"
                          " ORDER BY id", account)
    burst_ids = [r["id"] for r in rows[2:] if r["kind"] == "usage"]
    expiry = [r for r in rows if r["kind"] == "expiry"]
    assert [r["amount"] for r in expiry] == [-895]
    assert expiry[0]["id"] < min(burst_ids)
    spent = -sum(r["amount"] for r in rows[2:] if r["kind"] == "usage")
    balance = (await api.get(f"/v1/accounts/{account}")).json()["balance"]
    assert spent <= 100 + 1000 and balance == 1100 - spent and 0 <= balance < 10
    await assert_reconciled(db, account)


async def test_a_debit_refused_after_the_period_end_renews_and_pushes_first(
    shop: RunningApp, db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "edge")
    token = mint_token(shop.settings.token_secret, account, 600)[0]
    async with connect(f"{shop.ws_url}?token={token}") as ws:
        snapshot = json.loads(await ws.recv())
        async with db.acquire() as conn, conn.transaction():
            # The period ends a day early while no renewer can take the account.
            await conn.execute("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE",
                               account)
            await age_plan(conn, account, 1)
            debit = asyncio.create_task(api.post(f"/v1/accounts/{account}/debit", json={
                "amount": 5000, "reason": "x", "idempotency_key": key()}))
            await wait_for(lambda: waiting_for_a_lock(db))
        refused = await debit
        # Judged after the renewal (100 rolled over, 1,000 granted), which it committed.
        assert refused.status_code == 402
        assert refused.json()["available"] == 1100
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert (frame["balance"], frame["change"]["kind"]) == (1100, "allowance")
    assert frame["version"] > snapshot["version"]
    assert await ledger(api, account) == [("allowance", 1000), ("expiry", -900),
                                          ("allowance", 1000)]
    await assert_reconciled(db, account)


async def test_check_after_the_period_end_answers_as_the_renewing_charge_would(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    acc = await put_plan(api, account, "edge", datetime.now(UTC) - DAY + timedelta(seconds=3))
    assert (await charge(api, account, "video", 5)).status_code == 200
    async with db.acquire() as conn, conn.transaction():
        # No renewer can take the account; a check only reads it.
        await conn.execute("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE", account)
        await asyncio.sleep((ts(acc["period_end"]) - datetime.now(UTC)).total_seconds() + 0.05)
        r = await api.post(f"/v1/accounts/{account}/check",
                           json={"operation": "video", "quantity": 6})
    answer = r.json()
    # The new period has no usage yet, and resets a day after the old one ended.
    assert (answer["error"], answer["used"], answer["limit"]) == ("limit_reached", 0, 5)
    assert ts(answer["resets_at"]) == ts(acc["period_end"]) + DAY


async def hold(api: httpx.AsyncClient, account: str, operation: str, quantity: int = 1,
               **extra: Any) -> httpx.Response:
    return await api.post(f"/v1/accounts/{account}/holds", json={
        "operation": operation, "quantity": quantity, "idempotency_key": key(), **extra})


async def used(api: httpx.AsyncClient, account: str, operation: str) -> int:
    plan = (await api.get(f"/v1/accounts/{account}/plan")).json()
    count: int = plan["limits"][operation]["used"]
    return count


async def test_a_hold_for_an_operation_is_priced_and_limited_as_a_charge(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "daily")
    r = await hold(api, account, "generate_image", 2)
    assert r.status_code == 201, r.text
    h = r.json()["hold"]
    assert h["amount"] == 6 and h["metadata"]["unit_cost"] == 3  # the plan's price, not 5
    await api.post(f"/v1/accounts/{account}/credit",
                   json={"amount": 1000, "kind": "purchase", "idempotency_key": key()})
    r = await api.post(f"/v1/holds/{h['id']}/capture", json={})
    assert r.json()["transaction"]["metadata"] == {
        "operation": "generate_image", "quantity": 2, "unit_cost": 3}
    # The limit counts at placement: a hold of 3 leaves 2 for holds and charges alike.
    first = await hold(api, account, "video", 3)
    assert first.status_code == 201 and await used(api, account, "video") == 3
    before = (await api.get(f"/v1/accounts/{account}")).json()
    over = await hold(api, account, "video", 3)
    assert over.status_code == 402
    assert (over.json()["error"], over.json()["limit"], over.json()["used"]) == (
        "limit_reached", 5, 3)
    assert (await charge(api, account, "video", 3)).json()["error"] == "limit_reached"
    assert (await api.get(f"/v1/accounts/{account}")).json() == before  # nothing written
    # A release gives its units back; a capture keeps those its amount pays for.
    r = await api.post(f"/v1/holds/{first.json()['hold']['id']}/release")
    assert r.status_code == 200 and await used(api, account, "video") == 0
    again = await api.post(f"/v1/holds/{first.json()['hold']['id']}/release")
    assert again.headers["idempotent-replayed"] == "true"
    assert await used(api, account, "video") == 0  # a replay gives nothing back twice
    second = await hold(api, account, "video", 5)
    assert second.status_code == 201 and await used(api, account, "video") == 5
    # 81 of its 200 credits: three videos' worth (rounded up), the other two come back.
    r = await api.post(f"/v1/holds/{second.json()['hold']['id']}/capture", json={"amount": 81})
    assert r.status_code == 200 and await used(api, account, "video") == 3
    again = await api.post(f"/v1/holds/{second.json()['hold']['id']}/capture",
                           json={"amount": 81})
    assert again.headers["idempotent-replayed"] == "true"
    assert await used(api, account, "video") == 3  # a replay gives nothing back twice
    assert (await hold(api, account, "video", 2)).status_code == 201
    assert (await hold(api, account, "video")).json()["error"] == "limit_reached"
    await assert_reconciled(db, account)


async def test_an_expired_hold_gives_its_units_back(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "daily")
    r = await hold(api, account, "video", 4, ttl_seconds=1)
    assert r.status_code == 402 and r.json()["error"] == "insufficient_credits"
    assert await used(api, account, "video") == 0  # a hold refused counts nothing
    await api.post(f"/v1/accounts/{account}/credit",
                   json={"amount": 1000, "kind": "purchase", "idempotency_key": key()})
    r = await hold(api, account, "video", 4, ttl_seconds=1)
    assert r.status_code == 201 and await used(api, account, "video") == 4
    hold_id = r.json()["hold"]["id"]

    async def expired() -> bool:
        status = await db.fetchval("SELECT status FROM holds WHERE id = $1::uuid", hold_id)
        return bool(status == "expired")

    await wait_for(expired)
    assert await used(api, account, "video") == 0
    r = await api.post(f"/v1/holds/{hold_id}/release")
    assert (r.status_code, r.json()["status"]) == (409, "expired")
    await assert_reconciled(db, account)


async def test_a_hold_resolved_in_a_later_period_gives_back_to_its_own(
    db: asyncpg.Pool, api: httpx.AsyncClient, account: str
) -> None:
    await put_plan(api, account, "daily", datetime.now(UTC) - DAY + timedelta(seconds=1.5))
    r = await hold(api, account, "video", 2, ttl_seconds=600)
    assert r.status_code == 201
    old_start = await db.fetchval("SELECT period_start FROM accounts WHERE account_id = $1",
                                  account)

    async def renewed() -> bool:
        start = await db.fetchval("SELECT period_start FROM accounts WHERE account_id = $1",
                                  account)
        return bool(start != old_start)

    await wait_for(renewed)
    assert (await charge(api, account, "video")).status_code == 200  # the new period's
    r = await api.post(f"/v1/holds/{r.json()['hold']['id']}/release")
    assert r.status_code == 200
    counts = {row["period_start"]: row["used"] for row in await db.fetch(
        "SELECT period_start, used FROM plan_usage WHERE account_id = $1", account)}
    # Its units go back to the period that counted them; the new one keeps its charge.
    assert counts[old_start] == 0 and await used(api, account, "video") == 1
    await assert_reconciled(db, account)


async def test_20_concurrent_holds_pass_a_limit_exactly(
    shop: RunningApp, start_app: StartApp, db: asyncpg.Pool, api: httpx.AsyncClient,
    account: str,
) -> None:
    other = await start_app(catalog_file=shop.settings.catalog_file)
    await put_plan(api, account, "daily")
    await api.post(f"/v1/accounts/{account}/credit",
                   json={"amount": 100_000, "kind": "purchase", "idempotency_key": key()})
    async with other.client() as api2:
        answers = await asyncio.gather(*(
            hold((api, api2)[i % 2], account, "video") for i in range(20)))
    await other.stop()
    assert sorted(a.status_code for a in answers) == [201] * 5 + [402] * 15
    assert {a.json()["error"] for a in answers if a.status_code == 402} == {"limit_reached"}
    assert await used(api, account, "video") == 5
    placed = [a.json()["hold"] for a in answers if a.status_code == 201]
    acct = (await api.get(f"/v1/accounts/{account}")).json()
    assert acct["held"] == sum(h["amount"] for h in placed) == 5 * 40
    # Captured and released at once, each twice: two captures' units stay, three come back.
    resolutions = await asyncio.gather(*(
        api.post(f"/v1/holds/{h['id']}/{'capture' if i < 2 else 'release'}")
        for i, h in enumerate(placed) for _ in range(2)))
    assert {r.status_code for r in resolutions} == {200}
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in resolutions) == 5
    assert await used(api, account, "video") == 2
    await assert_reconciled(db, account)
