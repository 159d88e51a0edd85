"""Plan renewal: 100,000 accounts whose period just ended, renewed the way every instance's
jobs do it (`balance_renew(500)` until nothing is due), against a throwaway PostgreSQL.

Per account a renewal writes an `expiry` row (the unused allowance), an `allowance` row, a
grant, a plan_periods row and the account. The baseline, measured in the same run on the
same database, is a plain `INSERT ... SELECT` of the same two ledger rows per account into
a copy of the transactions table: what writing the ledger rows alone costs. Each round
uses fresh accounts; the table prints every round, then the median and the worst.

    python bench/renewal.py [--accounts 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.dev import servers as devservers
from server.schema import migrate

ALLOWANCE = 100
# The bench's own SQL names our tables plainly; the server never relies on a search_path.
IN_SCHEMA = {"search_path": "balance"}

# Accounts on plan 'bench' (a day) whose period ended a second ago, each holding the unused
# allowance of that period: what the database looks like at a period's end.
SEED = """
WITH a AS (
    INSERT INTO accounts (account_id, balance, version, plan, plan_anchor, period_index,
                          period_start, period_end)
    SELECT $1 || i, $2, 1, 'bench', now() - interval '1 day 1 second', 0,
           now() - interval '1 day 1 second', now() - interval '1 second'
    FROM generate_series(1, $3) i RETURNING account_id, period_start, period_end
), t AS (
    INSERT INTO transactions (account_id, kind, amount, balance_after, version, reason)
    SELECT account_id, 'allowance', $2, $2, 1, 'plan bench' FROM a
    RETURNING id, account_id
), l AS (
    INSERT INTO credit_lots (account_id, transaction_id, kind, amount, remaining, priority,
                             expires_at)
    SELECT t.account_id, t.id, 'allowance', $2, $2, 10, a.period_end
    FROM t JOIN a USING (account_id)
)
INSERT INTO plan_periods (account_id, period_start, period_end, plan)
SELECT account_id, period_start, period_end, 'bench' FROM a
"""

BASELINE = """
INSERT INTO ledger_copy (account_id, kind, amount, balance_after, version, reason, metadata)
SELECT $1 || i, k.kind, k.amount, k.after, k.version, k.reason, k.metadata
FROM generate_series(1, $3) i,
     (VALUES ('expiry', -$2::bigint, 0::bigint, 2, 'allowance expired at period end',
              jsonb_build_object('lot_id', 1)),
             ('allowance', $2::bigint, $2::bigint, 3, 'plan bench',
              jsonb_build_object('plan', 'bench', 'period_start', now()::text,
                                 'period_end', now()::text))
     ) AS k(kind, amount, after, version, reason, metadata)
"""


async def round_(pool: asyncpg.Pool, n: int, prefix: str) -> tuple[float, float, int]:
    """(renewal seconds, baseline seconds, ledger rows written by the renewal)."""
    await pool.execute(SEED, f"{prefix}-", ALLOWANCE, n)
    await pool.execute("VACUUM ANALYZE accounts")
    await pool.execute("VACUUM ANALYZE credit_lots")
    before = await pool.fetchval("SELECT count(*) FROM transactions")
    started = time.perf_counter()
    while True:
        done = await pool.fetchval("SELECT count(*) FROM balance_renew(500)")
        if not done:
            break
    renewal = time.perf_counter() - started
    rows = await pool.fetchval("SELECT count(*) FROM transactions") - before
    due = await pool.fetchval(
        "SELECT count(*) FROM accounts WHERE plan IS NOT NULL AND period_end <= now()")
    assert due == 0, f"{due} accounts still due"
    assert rows == 2 * n, f"{rows} ledger rows for {n} renewals"

    started = time.perf_counter()
    await pool.execute(BASELINE, f"{prefix}-copy-", ALLOWANCE, n)
    baseline = time.perf_counter() - started
    return renewal, baseline, rows


async def main(accounts: int, rounds: int) -> None:
    with devservers.start_postgres() as pg:
        conn = await asyncpg.connect(pg.url, server_settings=IN_SCHEMA)
        await migrate(conn)
        await conn.execute("""SELECT balance_sync_plans('{"bench": {"allowance": 100,
            "period": "day", "rollover": 0, "prices": {}, "limits": {}}}'::jsonb)""")
        await conn.execute("CREATE TABLE ledger_copy (LIKE transactions INCLUDING ALL)")
        await conn.close()
        pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=2,
                                         server_settings=IN_SCHEMA)
        assert pool is not None
        results = []
        print(f"renewal of {accounts:,} due accounts (balance_renew(500) until none is due)")
        print(f"{'round':>5} {'renewal s':>10} {'accounts/s':>11} {'rows/s':>9}"
              f" {'INSERT..SELECT s':>17} {'rows/s':>9} {'ratio':>6}")
        for r in range(rounds):
            renewal, baseline, rows = await round_(pool, accounts, f"r{r}")
            ratio = renewal / baseline
            results.append((renewal, baseline, ratio))
            print(f"{r + 1:>5} {renewal:>10.2f} {accounts / renewal:>11,.0f}"
                  f" {rows / renewal:>9,.0f} {baseline:>17.2f} {rows / baseline:>9,.0f}"
                  f" {ratio:>6.1f}")
        mismatched = await pool.fetch("SELECT * FROM balance_reconcile()")
        assert not mismatched, f"reconcile: {mismatched[:3]}"
        await pool.close()
        median = statistics.median(r[0] for r in results)
        worst = max(r[0] for r in results)
        ratio_median = statistics.median(r[2] for r in results)
        ratio_worst = max(r[2] for r in results)
        print(f"renewal: median {median:.2f} s ({accounts / median:,.0f} accounts/s),"
              f" worst {worst:.2f} s; time vs the plain INSERT..SELECT baseline: median"
              f" {ratio_median:.1f}x, worst {ratio_worst:.1f}x; reconcile clean")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.accounts, args.rounds))
