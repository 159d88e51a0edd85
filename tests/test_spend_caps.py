"""Spend caps (server/spend_caps.py, schema.sql step 017_spend_limits): never exceeded, over
real HTTP, real PostgreSQL and two server instances."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import StartApp, key


async def credit(client: httpx.AsyncClient, account: str, amount: int) -> None:
    r = await client.post(f"/v1/accounts/{account}/credit",
                          json={"amount": amount, "kind": "grant", "idempotency_key": key()})
    assert r.status_code == 200, r.text


async def set_cap(client: httpx.AsyncClient, account: str, amount: int | None,
                  period: str = "day") -> Any:
    spend = None if amount is None else {"amount": amount, "period": period}
    r = await client.put(f"/v1/accounts/{account}/limits", json={"spend": spend})
    assert r.status_code == 200, r.text
    return r.json()["limits"]["spend"]


async def debit(client: httpx.AsyncClient, account: str, amount: int,
                idempotency_key: str | None = None) -> httpx.Response:
    return await client.post(f"/v1/accounts/{account}/debit", json={
        "amount": amount, "reason": "work", "idempotency_key": idempotency_key or key()})


async def hold(client: httpx.AsyncClient, account: str, amount: int) -> httpx.Response:
    return await client.post(f"/v1/accounts/{account}/holds", json={
        "amount": amount, "reason": "job", "idempotency_key": key()})


async def limits(client: httpx.AsyncClient, account: str) -> Any:
    r = await client.get(f"/v1/accounts/{account}/limits")
    assert r.status_code == 200, r.text
    return r.json()["limits"]["spend"]


async def usage_rows(db: asyncpg.Pool, account: str) -> int:
    n: int = await db.fetchval(
        "SELECT count(*) FROM transactions WHERE account_id = $1 AND kind = 'usage'", account)
    return n


async def unreconciled(db: asyncpg.Pool, account: str) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1",
                               account))


def capped(r: httpx.Response) -> bool:
    """A 402 of the account's spend cap (a plan's limit would name its operation)."""
    body = r.json()
    return r.status_code == 402 and body["error"] == "limit_reached" and "operation" not in body


async def test_concurrent_debits_on_two_instances_never_pass_the_cap(
    start_app: StartApp, db: asyncpg.Pool, account: str
) -> None:
    """300 debits of 1 against a cap of 100, at once, half through each instance (each one
    batching them: group commit): exactly 100 go through, whatever the interleaving."""
    a, b = await start_app(), await start_app()
    try:
        async with a.client() as ca, b.client() as cb:
            await credit(ca, account, 1000)
            assert await set_cap(ca, account, 100, "month") is not None
            answers = await asyncio.gather(
                *(debit(ca if i % 2 else cb, account, 1) for i in range(300)))
            assert sorted(r.status_code for r in answers) == [200] * 100 + [402] * 200
            refused = [r.json() for r in answers if r.status_code == 402]
            assert all(capped(r) for r in answers if r.status_code == 402)
            assert {(body["limit"], body["used"], body["period"]) for body in refused} == {
                (100, 100, "month")}
            spend = await limits(cb, account)
            assert (spend["amount"], spend["used"], spend["held"]) == (100, 100, 0)
            assert (await ca.get(f"/v1/accounts/{account}")).json()["balance"] == 900
    finally:
        await a.stop()
        await b.stop()
    assert await usage_rows(db, account) == 100
    assert await unreconciled(db, account) == []


async def test_holds_and_debits_together_stay_within_the_cap(
    start_app: StartApp, db: asyncpg.Pool, account: str
) -> None:
    """Holds count as spent: concurrent holds and debits never take spent + held past the
    cap; a capture once the cap is reached still goes through (it moves held into spent)."""
    a, b = await start_app(), await start_app()
    try:
        async with a.client() as ca, b.client() as cb:
            await credit(ca, account, 1000)
            await set_cap(ca, account, 100, "month")
            calls = [("hold", 7)] * 30 + [("debit", 3)] * 60
            random.Random(29).shuffle(calls)
            answers = await asyncio.gather(*(
                (hold if kind == "hold" else debit)(ca if i % 2 else cb, account, amount)
                for i, (kind, amount) in enumerate(calls)))
            taken = sum(amount for (_, amount), r in zip(calls, answers, strict=True)
                        if r.status_code in (200, 201))
            assert all(r.status_code in (200, 201) or capped(r) for r in answers)
            assert 100 - 7 < taken <= 100, "refused only when the next one would not fit"
            spend = await limits(ca, account)
            assert spend["used"] + spend["held"] == taken
            holds = [r.json()["hold"] for r in answers if r.status_code == 201]
            assert holds, "some holds were placed"
            assert capped(await debit(ca, account, 100 - taken + 1))
            r = await cb.post(f"/v1/holds/{holds[0]['id']}/capture", json={"amount": 4})
            assert r.status_code == 200, r.text  # never refused by the cap
            after = await limits(ca, account)
            assert (after["used"], after["held"]) == (spend["used"] + 4, spend["held"] - 7)
            # A release gives back what was held, not what was spent.
            r = await cb.post(f"/v1/holds/{holds[1]['id']}/release")
            assert r.status_code == 200, r.text
            released = await limits(ca, account)
            assert (released["used"], released["held"]) == (after["used"], after["held"] - 7)
            assert released["used"] + released["held"] <= 100
    finally:
        await a.stop()
        await b.stop()
    assert await unreconciled(db, account) == []


async def test_a_refusal_writes_nothing_and_its_key_works_once_the_cap_is_raised(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    await credit(client, account, 100)
    await set_cap(client, account, 10)
    assert (await debit(client, account, 10)).status_code == 200
    again = key()
    refused = await debit(client, account, 1, again)
    assert capped(refused)
    body = refused.json()
    assert (body["limit"], body["used"], body["period"]) == (10, 10, "day")
    assert body["resets_at"].endswith("T00:00:00.000000Z")
    assert await usage_rows(db, account) == 1
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE account_id = $1 "
                             "AND key = $2", account, again) == 0
    version = (await client.get(f"/v1/accounts/{account}")).json()["version"]
    # A charge and an operation's hold are spending too; a plan's limit would name the
    # operation, the cap does not.
    charge = await client.post(f"/v1/accounts/{account}/charge", json={
        "operation": "upscale", "idempotency_key": key()})
    assert capped(charge)
    op_hold = await client.post(f"/v1/accounts/{account}/holds", json={
        "operation": "upscale", "idempotency_key": key()})
    assert capped(op_hold)
    assert (await client.get(f"/v1/accounts/{account}")).json()["version"] == version
    # Raising the cap (same period) keeps the count: the same key now goes through, once.
    assert (await set_cap(client, account, 11))["used"] == 10
    ok = await debit(client, account, 1, again)
    assert ok.status_code == 200 and "idempotent-replayed" not in ok.headers
    replay = await debit(client, account, 1, again)
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert await usage_rows(db, account) == 2


async def test_the_cap_refuses_before_the_balance_and_spares_operators(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    await credit(client, account, 5)
    await set_cap(client, account, 3)
    assert capped(await debit(client, account, 6))  # both would refuse: the cap answers
    assert (await debit(client, account, 6)).json()["used"] == 0
    assert (await debit(client, account, 3)).status_code == 200
    assert capped(await debit(client, account, 3))  # the cap, and the balance (2) too
    # An operator's adjustment is no spending: never refused by the cap, never counted.
    r = await client.post(f"/v1/accounts/{account}/adjust", json={
        "amount": -2, "reason": "correction", "actor": "ops", "idempotency_key": key()})
    assert r.status_code == 200, r.text
    assert (await limits(client, account))["used"] == 3
    await set_cap(client, account, 100)
    short = await debit(client, account, 1)
    assert short.status_code == 402 and short.json()["error"] == "insufficient_credits"
    assert await unreconciled(db, account) == []


async def test_a_cap_set_mid_window_counts_earlier_spending_and_windows_reset(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    await credit(client, account, 1000)
    assert (await debit(client, account, 30)).status_code == 200
    h = (await hold(client, account, 10)).json()["hold"]
    assert (await client.post(f"/v1/holds/{h['id']}/capture", json={"amount": 5})).status_code \
        == 200
    spend = await set_cap(client, account, 50)
    assert (spend["amount"], spend["period"], spend["used"], spend["held"]) == (50, "day", 35, 0)
    assert capped(await debit(client, account, 16))
    assert (await debit(client, account, 15)).status_code == 200
    assert (await limits(client, account))["used"] == 50
    # Removed: debits go through again, and nothing is counted.
    assert await set_cap(client, account, None) is None
    assert await limits(client, account) is None
    assert (await debit(client, account, 25)).status_code == 200
    # Set again (or with another period): counted anew from the ledger.
    assert (await set_cap(client, account, 80))["used"] == 75
    assert (await set_cap(client, account, 80, "month"))["used"] == 75
    assert (await set_cap(client, account, 80, "hour"))["used"] == 75
    assert capped(await debit(client, account, 6))
    # The window passes (moved into the past here): what it counted no longer does.
    await db.execute("UPDATE accounts SET spend_window = spend_window - interval '2 hours' "
                     "WHERE account_id = $1", account)
    assert (await limits(client, account))["used"] == 0
    assert (await debit(client, account, 80)).status_code == 200
    assert (await limits(client, account))["used"] == 80
    assert capped(await debit(client, account, 1))
    # A capture rolls a passed window too, and counts in the new one.
    await set_cap(client, account, 100, "hour")
    h = (await hold(client, account, 20)).json()["hold"]
    await db.execute("UPDATE accounts SET spend_window = spend_window - interval '2 hours' "
                     "WHERE account_id = $1", account)
    assert (await client.post(f"/v1/holds/{h['id']}/capture", json={})).status_code == 200
    spend = await limits(client, account)
    assert (spend["used"], spend["held"]) == (20, 0)
    assert await unreconciled(db, account) == []


async def test_check_settings_and_bad_bodies(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    await credit(client, account, 100)
    settings = (await client.get(f"/v1/accounts/{account}/settings")).json()
    assert settings["limits"] == {"spend": None}
    await set_cap(client, account, 10, "hour")
    assert (await hold(client, account, 4)).status_code == 201
    assert (await debit(client, account, 3)).status_code == 200
    spend = (await client.get(f"/v1/accounts/{account}/settings")).json()["limits"]["spend"]
    assert spend == await limits(client, account)
    assert (spend["amount"], spend["period"], spend["used"], spend["held"]) == (10, "hour", 3, 4)
    assert spend["resets_at"].endswith(":00:00.000000Z")
    checked = (await client.post(f"/v1/accounts/{account}/check", json={"amount": 4})).json()
    assert checked == {"allowed": False, "cost": 4, "available": 93, "error": "limit_reached",
                       "limit": 10, "used": 7, "period": "hour",
                       "resets_at": spend["resets_at"]}
    fits = (await client.post(f"/v1/accounts/{account}/check", json={"amount": 3})).json()
    assert fits["allowed"] is True
    charge = (await client.post(f"/v1/accounts/{account}/check", json={
        "operation": "generate_image"})).json()
    assert charge["allowed"] is False and charge["error"] == "limit_reached"
    audited = await db.fetchval("SELECT count(*) FROM audit_log WHERE account_id = $1 "
                                "AND action = 'limits'", account)
    assert audited == 1
    for bad in ({"spend": {"amount": 0, "period": "day"}},
                {"spend": {"amount": 10**12 + 1, "period": "day"}},
                {"spend": {"amount": 5, "period": "week"}},
                {"spend": {"amount": 5}},
                {"spend": {"amount": "5", "period": "day"}},
                {"spend": {"amount": 5, "period": "day", "extra": 1}},
                {"spend": 5}, {"limit": 5}, {}):
        r = await client.put(f"/v1/accounts/{account}/limits", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"] == "invalid_request"
    assert await limits(client, account) == spend
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE account_id = $1 "
                             "AND action = 'limits'", account) == audited
    # A settings call takes no idempotency_key: one is accepted and ignored.
    r = await client.put(f"/v1/accounts/{account}/limits", json={
        "spend": {"amount": 12, "period": "hour"}, "idempotency_key": key()})
    assert r.status_code == 200 and r.json()["limits"]["spend"]["amount"] == 12
    # JSON has one number type: 13.0 is the integer 13, nested in `spend` too.
    r = await client.put(f"/v1/accounts/{account}/limits", json={
        "spend": {"amount": 13.0, "period": "hour"}})
    assert r.status_code == 200 and r.json()["limits"]["spend"]["amount"] == 13


async def test_an_unknown_account_reads_without_a_cap_and_is_not_created(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    assert await limits(client, account) is None
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE account_id = $1",
                             account) == 0


@pytest.mark.parametrize("period", ["hour", "day", "month"])
async def test_resets_at_is_the_end_of_the_utc_window(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str, period: str
) -> None:
    spend = await set_cap(client, account, 5, period)
    expected = await db.fetchval(
        "SELECT to_char((date_trunc($1, now() AT TIME ZONE 'UTC') + ('1 ' || $1)::interval),"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", period)
    assert spend["resets_at"] == expected


async def test_a_window_already_rolled_ahead_keeps_its_count(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str
) -> None:
    """A transaction that began just before a window ended can get the row after one of the
    next window rolled it: it counts in that later window, never starting it again at 0."""
    await credit(client, account, 100)
    await set_cap(client, account, 10, "hour")
    assert (await debit(client, account, 8)).status_code == 200
    # As such a late transaction sees the row: the stored window is after its own.
    await db.execute("UPDATE accounts SET spend_window = spend_window + interval '1 hour' "
                     "WHERE account_id = $1", account)
    assert capped(await debit(client, account, 3))
    assert (await debit(client, account, 2)).status_code == 200
    window = await db.fetchval("SELECT spend_window - date_trunc('hour', now(), 'UTC') "
                               "FROM accounts WHERE account_id = $1", account)
    assert window.total_seconds() == 3600
    assert (await limits(client, account))["used"] == 10
