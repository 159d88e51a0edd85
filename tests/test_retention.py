"""Retention: old idempotency keys and delivered events go in batches, one pruner at a time;
what is still owed, still recent or guards an import stays."""

from __future__ import annotations

import uuid

import asyncpg

from server import retention
from tests.conftest import IN_SCHEMA


async def _keys(db: asyncpg.Pool, account: str, count: int, days: int, prefix: str) -> None:
    await db.executemany(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, created_at)"
        " VALUES ($1, $2, '\\x00', now() - make_interval(days => $3))",
        [(account, f"{prefix}{i}", days) for i in range(count)])


async def _left(db: asyncpg.Pool, account: str) -> list[str]:
    rows = await db.fetch("SELECT key FROM idempotency_keys WHERE account_id = $1 ORDER BY key",
                          account)
    return [r["key"] for r in rows]


async def test_old_keys_go_in_batches_and_recent_and_import_keys_stay(
    db: asyncpg.Pool, account: str
) -> None:
    await _keys(db, account, 12, 31, "old-")
    await _keys(db, account, 2, 29, "recent-")
    await _keys(db, account, 1, 400, "system:import")
    pruned = await retention.prune(db, 30, 30, batch=5, pause=0)
    assert pruned.ran and pruned.keys >= 12
    assert pruned.batches >= 3  # 5 + 5 + 2: never more than a batch per transaction
    assert await _left(db, account) == ["recent-0", "recent-1", "system:import0"]


async def _event(db: asyncpg.Pool, account: str, status: str, *, age_days: int,
                 delivered_days: int | None, attempts: int) -> int:
    event_id: int = await db.fetchval(
        "INSERT INTO events (type, account_id, data, status, attempts, created_at,"
        " delivered_at, next_attempt_at)"
        " VALUES ('balance.low', $1, '{}', $2, $3, now() - make_interval(days => $4),"
        "         now() - make_interval(days => $5),"
        # Far in the future: no outbox a test left running claims it meanwhile.
        "         now() + interval '1 year')"
        " RETURNING id", account, status, attempts, age_days, delivered_days)
    await db.executemany(
        "INSERT INTO event_attempts (event_id, attempt, status) VALUES ($1, $2, 200)",
        [(event_id, n) for n in range(1, attempts + 1)])
    return event_id


async def test_delivered_events_go_with_their_attempts_and_undelivered_stay(
    db: asyncpg.Pool, account: str
) -> None:
    old = await _event(db, account, "delivered", age_days=40, delivered_days=31, attempts=2)
    recent = await _event(db, account, "delivered", age_days=40, delivered_days=1, attempts=1)
    pending = await _event(db, account, "pending", age_days=40, delivered_days=None, attempts=3)
    failed = await _event(db, account, "failed", age_days=40, delivered_days=None, attempts=8)
    pruned = await retention.prune(db, 30, 30, pause=0)
    assert pruned.ran and pruned.events >= 1 and pruned.attempts >= 2
    left = await db.fetch("SELECT id FROM events WHERE account_id = $1 ORDER BY id", account)
    assert [r["id"] for r in left] == [recent, pending, failed]
    assert await db.fetchval("SELECT count(*) FROM event_attempts WHERE event_id = $1", old) == 0
    kept = await db.fetchval("SELECT count(*) FROM event_attempts WHERE event_id = ANY($1)",
                             [recent, pending, failed])
    assert kept == 1 + 3 + 8


async def test_a_second_pruner_skips_while_one_runs_and_the_lock_ends_with_its_transaction(
    db: asyncpg.Pool, migrated: str
) -> None:
    account = f"acct-{uuid.uuid4().hex[:12]}"
    await _keys(db, account, 3, 31, "old-")
    first = await asyncpg.connect(migrated, server_settings=IN_SCHEMA)
    try:
        async with first.transaction():
            row = await first.fetchrow("SELECT * FROM balance_prune(30, 30, 5000)")
            assert row is not None and row["ran"]
            # The first pruner's transaction is still open: the second one skips.
            second = await retention.prune(db, 30, 30, pause=0)
            assert not second.ran and second.batches == 0
        # Its transaction ended while its session lives on (as a PgBouncer server connection
        # would, for other clients): the lock went with the transaction.
        await _keys(db, account, 2, 31, "later-")
        third = await retention.prune(db, 30, 30, pause=0)
        assert third.ran and third.keys >= 2
        assert await _left(db, account) == []
    finally:
        await first.close()
