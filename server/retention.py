"""Retention: old idempotency keys and delivered app webhook events, deleted in batches.

The work is `balance_prune` in schema.sql ("retention"), one batch per transaction under a
transaction-scoped advisory lock: one instance prunes at a time, the others skip, and no
batch holds its rows (or the server's writes to them) for long.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

BATCH = 5000  # rows of each kind per transaction
PAUSE = 0.05  # seconds between batches: the ledger's own writes go first


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one round deleted; `ran` is false when another instance held the lock."""

    ran: bool
    keys: int = 0
    events: int = 0
    attempts: int = 0
    batches: int = 0


async def prune(pool: asyncpg.Pool, key_days: int, event_days: int, *, batch: int = BATCH,
                pause: float = PAUSE) -> Pruned:
    """Delete batches until one comes back short, or another instance takes over."""
    keys = events = attempts = batches = 0
    while True:
        row = await pool.fetchrow("SELECT * FROM balance.balance_prune($1, $2, $3)",
                                  key_days, event_days, batch)
        assert row is not None
        if not row["ran"]:
            # Another instance is pruning (or took over between two of our batches).
            return Pruned(batches > 0, keys, events, attempts, batches)
        batches += 1
        keys += row["keys_deleted"]
        events += row["events_deleted"]
        attempts += row["attempts_deleted"]
        if row["keys_deleted"] < batch and row["events_deleted"] < batch:
            return Pruned(True, keys, events, attempts, batches)
        await asyncio.sleep(pause)
