"""Ledger guarantees under concurrency, expiry, debt, and the schema's own idempotency."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from server import metrics
from server.dev import servers as devservers
from server.ledger import Ledger, request_hash
from server.messages import DebitRequest
from tests.conftest import RunningApp, StartApp, key


async def balance_of(client: httpx.AsyncClient, account: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/v1/accounts/{account}")).json()
    return body


async def grant(client: httpx.AsyncClient, account: str, amount: int, **extra: Any) -> None:
    r = await client.post(f"/v1/accounts/{account}/credit",
                          json={"amount": amount, "kind": "grant", "idempotency_key": key(),
                                **extra})
    assert r.status_code == 200, r.text


async def test_300_concurrent_debits_over_two_instances(
    app: RunningApp, start_app: StartApp, account: str, db: asyncpg.Pool
) -> None:
    other = await start_app()
    async with app.client() as a, other.client() as b:
        await grant(a, account, 100)

        async def debit(i: int) -> int:
            c = a if i % 2 else b
            r = await c.post(f"/v1/accounts/{account}/debit",
                             json={"amount": 1, "reason": "race", "idempotency_key": f"k{i}"})
            return r.status_code

        statuses = await asyncio.gather(*(debit(i) for i in range(300)))
        assert statuses.count(200) == 100
        assert statuses.count(402) == 200
        final = await balance_of(a, account)
    assert (final["balance"], final["used"], final["version"]) == (0, 100, 101)
    versions = await db.fetch(
        "SELECT version FROM transactions WHERE account_id = $1 ORDER BY id", account)
    assert [r["version"] for r in versions] == list(range(1, 102))
    assert await db.fetchval(
        "SELECT sum(amount) FROM transactions WHERE account_id = $1", account) == 0
    await other.stop()


async def test_40_concurrent_requests_one_key_one_transaction(
    app: RunningApp, start_app: StartApp, account: str, db: asyncpg.Pool
) -> None:
    other = await start_app()
    async with app.client() as a, other.client() as b:
        await grant(a, account, 100)
        body = {"amount": 3, "reason": "once", "idempotency_key": key()}
        responses = await asyncio.gather(*(
            (a if i % 2 else b).post(f"/v1/accounts/{account}/debit", json=body)
            for i in range(40)
        ))
        assert {r.status_code for r in responses} == {200}
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 39
        assert len({r.json()["transaction"]["id"] for r in responses}) == 1
        assert (await balance_of(a, account))["balance"] == 97
    usage = await db.fetchval(
        "SELECT count(*) FROM transactions WHERE account_id = $1 AND kind = 'usage'", account)
    assert usage == 1
    await other.stop()


_POST = ("SELECT (r).* FROM (SELECT balance_post($1, 0, $2, '\\x01'::bytea, 'usage', $3, 'x',"
         " NULL, NULL, 'available') r) s")


async def test_a_key_committed_meanwhile_fails_the_statement_whole_and_its_run_again_replays(
    db: asyncpg.Pool, account: str
) -> None:
    """A key is written once, with its response, when the movement is done: a request that
    read the key as new while another with the same key was under way must not move the
    balance a second time. Its statement fails whole (serialization_failure), and running it
    again replays the first. Also: a refusal leaves no key behind."""
    async with db.acquire() as first, db.acquire() as second:
        await first.execute("SELECT balance_post($1, 0, 'seed', '\\x00'::bytea, 'grant', 10,"
                            " 'seed', NULL, NULL, 'available')", account)
        same = key()
        async with first.transaction():
            row = await first.fetchrow(_POST, account, same, -3)
            assert row is not None and (row["result"], row["balance"]) == ("ok", 7)
            racing = asyncio.create_task(second.fetchrow(_POST, account, same, -3))
            await asyncio.sleep(0.3)
            assert not racing.done()  # waits for the account's row
        try:
            await racing
            raise AssertionError("the second request with the same key moved the balance")
        except asyncpg.SerializationError as exc:
            assert "BL003" in str(exc)
        again = await second.fetchrow(_POST, account, same, -3)
        assert again is not None and (again["result"], again["replayed"]) == ("ok", True)
        assert json.loads(again["body"])["account"]["balance"] == 7
        refused = key()
        row = await second.fetchrow(_POST, account, refused, -100)
        assert row is not None and row["result"] == "insufficient"
    assert await db.fetchval("SELECT balance FROM accounts WHERE account_id = $1", account) == 7
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE account_id = $1"
                             " AND key = $2", account, refused) == 0


async def test_the_copy_of_a_debit_that_took_the_last_credits_replays_it_not_402(
    db: asyncpg.Pool, account: str
) -> None:
    """A retry sent while the first request was still committing waits for the account's
    row, then finds no credits left: it must answer what the first did (a replay), or 409
    for another body, never a 402 for a key that was charged."""
    async with db.acquire() as first, db.acquire() as second, db.acquire() as third:
        await first.execute("SELECT balance_post($1, 0, 'seed', '\\x00'::bytea, 'grant', 3,"
                            " 'seed', NULL, NULL, 'available')", account)
        same = key()
        other_body = _POST.replace("'\\x01'", "'\\x02'")
        async with first.transaction():
            row = await first.fetchrow(_POST, account, same, -3)
            assert row is not None and (row["result"], row["balance"]) == ("ok", 0)
            copy = asyncio.create_task(second.fetchrow(_POST, account, same, -3))
            changed = asyncio.create_task(third.fetchrow(other_body, account, same, -3))
            await asyncio.sleep(0.3)
            assert not copy.done() and not changed.done()  # both wait for the row
        replayed, conflict = await copy, await changed
        assert replayed is not None and (replayed["result"], replayed["replayed"]) == ("ok", True)
        assert json.loads(replayed["body"]) == json.loads(row["body"])
        assert conflict is not None and conflict["result"] == "conflict"
    assert await db.fetchval("SELECT balance FROM accounts WHERE account_id = $1", account) == 0


async def test_hold_expires_by_itself(client: httpx.AsyncClient, account: str,
                                      db: asyncpg.Pool) -> None:
    await grant(client, account, 10)
    r = await client.post(f"/v1/accounts/{account}/holds",
                          json={"amount": 8, "reason": "job", "ttl_seconds": 1,
                                "idempotency_key": key()})
    hold = r.json()["hold"]
    version_after_hold = r.json()["account"]["version"]
    for _ in range(40):
        await asyncio.sleep(0.1)
        acct = await balance_of(client, account)
        if acct["held"] == 0:
            break
    assert (acct["balance"], acct["held"], acct["available"]) == (10, 0, 10)
    assert acct["version"] == version_after_hold + 1
    status = await db.fetchval("SELECT status FROM holds WHERE id = $1::uuid", hold["id"])
    assert status == "expired"
    late = await client.post(f"/v1/holds/{hold['id']}/capture")
    assert late.status_code == 409 and late.json()["status"] == "expired"


async def test_expiring_lots_spent_soonest_first_and_rest_expires(
    client: httpx.AsyncClient, account: str, db: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    await grant(client, account, 50)  # never expires
    await grant(client, account, 30, expires_at=(now + timedelta(hours=1)).isoformat())
    await grant(client, account, 20, expires_at=(now + timedelta(seconds=2)).isoformat())
    r = await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": 25, "reason": "x", "idempotency_key": key()})
    assert r.status_code == 200
    grants = (await client.get(f"/v1/accounts/{account}/grants")).json()["grants"]
    # The 20 expiring first went entirely, then 5 of the 30; the permanent 50 is untouched.
    assert [(g["amount"], g["remaining"]) for g in grants] == [(30, 25), (50, 50)]
    await client.post(f"/v1/accounts/{account}/debit",
                      json={"amount": 5, "reason": "x", "idempotency_key": key()})
    await grant(client, account, 7, expires_at=(now + timedelta(seconds=1)).isoformat())
    for _ in range(40):
        await asyncio.sleep(0.1)
        acct = await balance_of(client, account)
        if acct["balance"] == 70:
            break
    # 100 - 30 spent + 7 granted - 7 expired.
    assert acct["balance"] == 70
    expiry = await db.fetch(
        "SELECT amount FROM transactions WHERE account_id = $1 AND kind = 'expiry'", account)
    assert [r["amount"] for r in expiry] == [-7]


async def test_lot_expiry_spares_held_credits(client: httpx.AsyncClient, account: str,
                                             db: asyncpg.Pool) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    await grant(client, account, 10, expires_at=soon)
    r = await client.post(f"/v1/accounts/{account}/holds",
                          json={"amount": 6, "reason": "job", "idempotency_key": key()})
    hold_id = r.json()["hold"]["id"]
    for _ in range(40):
        await asyncio.sleep(0.1)
        if await db.fetchval("SELECT count(*) FROM transactions WHERE account_id = $1 "
                             "AND kind = 'expiry'", account):
            break
    acct = await balance_of(client, account)
    assert (acct["balance"], acct["held"], acct["available"]) == (6, 6, 0)
    r = await client.post(f"/v1/holds/{hold_id}/capture")
    assert r.status_code == 200 and r.json()["account"]["balance"] == 0


async def wait_for(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.05)


async def test_hole4_a_hold_does_not_shield_credits_from_expiry(
    client: httpx.AsyncClient, account: str, db: asyncpg.Pool
) -> None:
    """Holding promo credits across their expiry and then releasing must not keep them."""
    await grant(client, account, 30)  # never expires
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    await grant(client, account, 100, expires_at=soon)
    released = (await client.post(f"/v1/accounts/{account}/holds", json={
        "amount": 100, "reason": "shield", "idempotency_key": key()})).json()["hold"]["id"]
    captured = (await client.post(f"/v1/accounts/{account}/holds", json={
        "amount": 30, "reason": "job", "idempotency_key": key()})).json()["hold"]["id"]

    async def lot_expired() -> bool:
        return bool(await db.fetchval(
            "SELECT expired_held FROM accounts WHERE account_id = $1", account))

    await wait_for(lot_expired)
    # 100 of the 130 held have expired meanwhile; nothing can leave while holds reserve it.
    acct = await balance_of(client, account)
    assert (acct["balance"], acct["held"], acct["available"]) == (130, 130, 0)
    r = await client.post(f"/v1/holds/{released}/release")
    assert r.status_code == 200
    # Released: the expired credits leave with it; the other hold keeps its 30.
    assert (r.json()["account"]["balance"], r.json()["account"]["held"]) == (30, 30)
    r = await client.post(f"/v1/holds/{captured}/capture", json={"amount": 10})
    assert r.status_code == 200 and r.json()["account"]["balance"] == 20
    kinds = await db.fetch(
        "SELECT kind, amount FROM transactions WHERE account_id = $1 ORDER BY id", account)
    assert [(k["kind"], k["amount"]) for k in kinds] == [
        ("grant", 30), ("grant", 100), ("expiry", -100), ("usage", -10)]
    assert await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1",
                          account) == []


async def test_hole5_a_connection_lost_mid_statement_is_outcome_unknown(
    client: httpx.AsyncClient, account: str, db: asyncpg.Pool
) -> None:
    """503 `outcome_unknown`, never "nothing was written"; the same key then charges once."""
    await grant(client, account, 50)
    body = {"amount": 7, "reason": "lost", "idempotency_key": key()}
    async with db.acquire() as blocker:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE", account)
        debit = asyncio.create_task(client.post(f"/v1/accounts/{account}/debit", json=body))

        async def waiting_backend() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%balance_post%'"))

        await wait_for(waiting_backend)  # the debit was sent and waits on the account
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE '%balance_post%'")
        r = await debit
        await tx.rollback()
    assert r.status_code == 503 and r.json()["error"] == "outcome_unknown", r.text
    again = await client.post(f"/v1/accounts/{account}/debit", json=body)
    assert again.status_code == 200 and again.json()["account"]["balance"] == 43
    replay = await client.post(f"/v1/accounts/{account}/debit", json=body)
    assert replay.headers.get("idempotent-replayed") == "true"
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE account_id = $1"
                             " AND kind = 'usage'", account) == 1


async def test_hole6_the_sweeper_and_spending_never_deadlock(
    start_app: StartApp, postgres: devservers.PostgresServer, db: asyncpg.Pool
) -> None:
    """Expiring lots and holds swept every 20 ms while debits, holds and captures hit the
    same accounts for 6 s: no deadlock in PostgreSQL's log, no 5xx, the ledger reconciles."""
    app = await start_app(sweep_interval=0.02)
    log_start = postgres.log_path.stat().st_size
    accounts = [f"sweep-{uuid.uuid4().hex[:10]}-{i}" for i in range(4)]
    statuses: list[int] = []
    async with app.client() as c:
        for account in accounts:
            await grant(c, account, 1_000_000)

        # Lots expiring in bursts all through the run, on every account at once. Each one's
        # expiry is taken when it is sent: a loaded machine sending the 960 slowly must not
        # find the first ones already past (a 422, not what this test is about).
        sending = asyncio.Semaphore(32)  # fewer than the client's connections: no queue

        async def expiring(account: str, i: int) -> None:
            async with sending:
                expires_at = datetime.now(UTC) + timedelta(seconds=2 + i // 8 * 0.1)
                await grant(c, account, 50, expires_at=expires_at.isoformat())

        await asyncio.gather(*(expiring(account, i) for account in accounts for i in range(240)))
        deadline = asyncio.get_running_loop().time() + 6.0

        async def spend(worker: int) -> None:
            while asyncio.get_running_loop().time() < deadline:
                account = accounts[worker % len(accounts)]
                r = await c.post(f"/v1/accounts/{account}/debit",
                                 json={"amount": 3, "reason": "x", "idempotency_key": key()})
                statuses.append(r.status_code)
                r = await c.post(f"/v1/accounts/{account}/holds", json={
                    "amount": 20, "reason": "h", "ttl_seconds": 1, "idempotency_key": key()})
                statuses.append(r.status_code)
                if worker % 2 and r.status_code == 201:
                    r = await c.post(f"/v1/holds/{r.json()['hold']['id']}/capture",
                                     json={"amount": 5})
                    statuses.append(r.status_code)

        await asyncio.gather(*(spend(w) for w in range(8)))
    await app.stop()
    assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
    log = postgres.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "deadlock detected" not in log
    await asyncio.sleep(1.5)  # the last holds expire (another app's sweeper may do it)
    assert await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = ANY($1)",
                          accounts) == []


async def test_grants_are_spent_by_priority_then_expiry_then_age(
    client: httpx.AsyncClient, account: str
) -> None:
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    sooner = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await grant(client, account, 40, kind="purchase")                     # priority 50
    await grant(client, account, 10, kind="refund")                       # 30
    await grant(client, account, 20, expires_at=later)                    # 20, expires later
    await grant(client, account, 5, expires_at=sooner)                    # 20, expires sooner
    await grant(client, account, 7)                                       # 20, never expires
    await grant(client, account, 3, priority=5)                           # chosen: first
    r = await client.get(f"/v1/accounts/{account}/grants")
    order = [(g["kind"], g["remaining"], g["priority"]) for g in r.json()["grants"]]
    assert order == [("grant", 3, 5), ("grant", 5, 20), ("grant", 20, 20), ("grant", 7, 20),
                     ("refund", 10, 30), ("purchase", 40, 50)]
    await client.post(f"/v1/accounts/{account}/debit",
                      json={"amount": 34, "reason": "x", "idempotency_key": key()})
    r = await client.get(f"/v1/accounts/{account}/grants")
    left = [(g["kind"], g["remaining"]) for g in r.json()["grants"]]
    # 3 + 5 + 20 + 6 of the 7: the bought credits are untouched while others remain.
    assert left == [("grant", 1), ("refund", 10), ("purchase", 40)]
    r = await client.post(f"/v1/accounts/{account}/credit", json={
        "amount": 1, "kind": "grant", "priority": 101, "idempotency_key": key()})
    assert r.status_code == 422


async def test_a_captures_pushed_change_names_its_holds_reason(
    db: asyncpg.Pool, account: str
) -> None:
    """The capture's transaction has the hold's reason; its pushed change says the same (a
    live ledger row in the browser is built from it)."""
    ledger = Ledger(db, 10)
    frames: list[Any] = []
    ledger.on_commit(frames.append)
    placed = await ledger.hold(account, amount=5, ttl_seconds=60, reason="generate_image",
                               idempotency_key=key(), fingerprint=b"f", metadata=None)
    hold_id = json.loads(placed.body)["hold"]["id"]
    captured = await ledger.resolve_hold(hold_id, "capture")
    assert json.loads(captured.body)["transaction"]["reason"] == "generate_image"
    assert [(f.change.kind, f.change.reason) for f in frames] == [
        ("hold_placed", "generate_image"), ("usage", "generate_image")]


async def test_a_capture_spends_what_its_hold_reserved_in_spending_order(
    client: httpx.AsyncClient, account: str, db: asyncpg.Pool
) -> None:
    """Held: 30 of a promo grant (priority 20) and 70 of bought credits expiring (50). At
    expiry the 70 wait for the hold; captured, they are spent and the other 30 bought
    credits that expired leave at once."""
    await grant(client, account, 30)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    await grant(client, account, 100, kind="purchase", expires_at=soon)
    hold = (await client.post(f"/v1/accounts/{account}/holds", json={
        "amount": 100, "reason": "job", "idempotency_key": key()})).json()["hold"]["id"]

    async def expired() -> bool:
        return bool(await db.fetchval(
            "SELECT expired_held FROM accounts WHERE account_id = $1", account))

    await wait_for(expired)
    acct = await balance_of(client, account)
    assert (acct["balance"], acct["held"]) == (100, 100)
    r = await client.post(f"/v1/holds/{hold}/capture")
    assert r.status_code == 200 and r.json()["account"]["balance"] == 0
    assert await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1",
                          account) == []


async def test_reversal_into_debt_blocks_debits(app: RunningApp, account: str) -> None:
    ledger: Ledger = app.asgi.state.resources.ledger
    async with app.client() as client:
        await grant(client, account, 10, kind="purchase")
        await client.post(f"/v1/accounts/{account}/debit",
                          json={"amount": 8, "reason": "x", "idempotency_key": key()})
        outcome = await ledger.post(
            account, kind="reversal", amount=-10, reason="refunded", idempotency_key=key(),
            fingerprint=request_hash("test", DebitRequest(10, "r", "k")), mode="debt",
        )
        assert json.loads(outcome.body)["account"]["balance"] == -8
        r = await client.post(f"/v1/accounts/{account}/debit",
                              json={"amount": 1, "reason": "x", "idempotency_key": key()})
        assert r.status_code == 402 and r.json()["available"] == -8
        r = await client.post(f"/v1/accounts/{account}/holds",
                              json={"amount": 1, "reason": "x", "idempotency_key": key()})
        assert r.status_code == 402
        await grant(client, account, 11, kind="purchase")
        r = await client.post(f"/v1/accounts/{account}/debit",
                              json={"amount": 3, "reason": "x", "idempotency_key": key()})
        assert r.status_code == 200 and r.json()["account"]["balance"] == 0


async def test_ledger_is_append_only(db: asyncpg.Pool, client: httpx.AsyncClient,
                                     account: str) -> None:
    await grant(client, account, 5)
    try:
        await db.execute("UPDATE transactions SET amount = 500 WHERE account_id = $1", account)
    except asyncpg.RestrictViolationError:
        pass
    else:
        raise AssertionError("UPDATE of a ledger row was allowed")
    assert await db.fetchval("SELECT amount FROM transactions WHERE account_id = $1", account) == 5


async def test_concurrent_new_account_gets_welcome_once(start_app: StartApp, account: str,
                                                        db: asyncpg.Pool) -> None:
    app = await start_app(welcome_credits=10)
    async with app.client() as c:
        rs = await asyncio.gather(*(
            c.post(f"/v1/accounts/{account}/debit",
                   json={"amount": 1, "reason": "x", "idempotency_key": f"w{i}"})
            for i in range(20)))
    assert [r.status_code for r in rs].count(200) == 10
    grants = await db.fetchval(
        "SELECT count(*) FROM transactions WHERE account_id = $1 AND kind = 'grant'", account)
    assert grants == 1
    await app.stop()


async def test_batched_posts_keep_every_field(client: httpx.AsyncClient, account: str,
                                              db: asyncpg.Pool) -> None:
    """Concurrent calls go through one balance_post_many; each keeps its own fields."""
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()

    async def one(i: int) -> httpx.Response:
        body: dict[str, Any] = {"amount": i + 1, "kind": "grant", "idempotency_key": f"b{i}",
                                "reason": f"r{i}", "metadata": {"i": i}}
        if i % 2:
            body["expires_at"] = later
        return await client.post(f"/v1/accounts/{account}/credit", json=body)

    def totals() -> tuple[float, float]:
        samples = [s for metric in metrics.batch_size.collect() for s in metric.samples]
        return (sum(s.value for s in samples if s.name.endswith("_sum")),
                sum(s.value for s in samples if s.name.endswith("_count")))

    moved_before, batches_before = totals()
    responses = await asyncio.gather(*(one(i) for i in range(30)))
    moved_after, batches_after = totals()
    moved, batches = moved_after - moved_before, batches_after - batches_before
    assert moved >= 30 and batches < moved  # at least one round trip carried several
    assert all(r.status_code == 200 for r in responses)
    for i, r in enumerate(responses):
        t = r.json()["transaction"]
        assert (t["amount"], t["reason"], t["metadata"]) == (i + 1, f"r{i}", {"i": i})
    rows = await db.fetch("SELECT amount FROM credit_lots WHERE account_id = $1"
                          " AND expires_at IS NOT NULL ORDER BY amount", account)
    assert [r["amount"] for r in rows] == [i + 1 for i in range(30) if i % 2]
    acct = await balance_of(client, account)
    assert acct["balance"] == sum(range(1, 31)) and acct["version"] == 30


async def test_a_capture_sent_ten_times_at_once_is_written_once(
    client: httpx.AsyncClient, account: str, db: asyncpg.Pool
) -> None:
    """An SDK retries a capture whose connection was cut, maybe while the first still runs:
    each copy waits for the hold's row, then replays what the first wrote."""
    await grant(client, account, 100)
    r = await client.post(f"/v1/accounts/{account}/holds",
                          json={"amount": 40, "reason": "job", "idempotency_key": key()})
    hold_id = r.json()["hold"]["id"]
    answers = await asyncio.gather(*(
        client.post(f"/v1/holds/{hold_id}/capture", json={"amount": 30}) for _ in range(10)))
    assert {a.status_code for a in answers} == {200}
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 9
    assert len({a.json()["transaction"]["id"] for a in answers}) == 1
    final = await balance_of(client, account)
    assert (final["balance"], final["held"], final["used"]) == (70, 0, 30)
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE hold_id = $1::uuid",
                             hold_id) == 1
    assert await db.fetch("SELECT * FROM balance_reconcile() WHERE account_id = $1",
                          account) == []
