"""HTTP debits/s through PgBouncer in transaction mode vs straight to PostgreSQL, same run.

Two `balance-server serve` processes on one throwaway PostgreSQL: one with DATABASE_URL
straight to it (asyncpg's statement cache on), one through a throwaway PgBouncer in
transaction mode (what Supabase's and Neon's pooled URLs are: no prepared statement kept
across transactions, so each statement is parsed again). wrk drives the same debits at 8 and
32 clients on distinct accounts, the two servers taking turns. Prints debits/s and the ratio
pooled / direct, median (worst) of the runs.

    python bench/pooler.py [--seconds 8] [--repeat 3] [--server-sessions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.debit import seed, start_server, wrk
from server.dev import servers as devservers
from server.dev.pgbouncer import start_pgbouncer

GOAL = 0.8  # the least ratio pooled / direct we aim for: a Parse per statement, no more


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--server-sessions", type=int, default=20,
                        help="PgBouncer's default_pool_size (the server's pool is 32)")
    args = parser.parse_args()
    clients = (8, 32)
    runs: dict[int, list[tuple[float, float]]] = {c: [] for c in clients}
    with devservers.start_postgres() as pg, devservers.start_redis() as redis, \
            start_pgbouncer(pg, pool_size=args.server_sessions) as bouncer:
        asyncio.run(seed(pg.url))
        database = pg.url.rsplit("/", 1)[1]
        direct_port, pooled_port = devservers.free_port(), devservers.free_port()
        direct = start_server(pg, redis, direct_port)
        pooled = start_server(pg, redis, pooled_port,
                              extra_env={"DATABASE_URL": bouncer.url(database)})
        try:
            for port in (direct_port, pooled_port):
                wrk(port, 8, False, 2, f"warmup{port}")
            for run in range(args.repeat):
                for n in clients:
                    straight = wrk(direct_port, n, False, args.seconds, f"d{run}{n}")[0]
                    through = wrk(pooled_port, n, False, args.seconds, f"p{run}{n}")[0]
                    runs[n].append((through, straight))
                    print(f"# run {run + 1}: x{n}: pooled {through:.0f} vs direct "
                          f"{straight:.0f} ({through / straight:.2f})", flush=True)
        finally:
            for server in (direct, pooled):
                server.terminate()
                server.wait(timeout=30)
    print()
    print(f"HTTP debits/s, distinct accounts, {os.cpu_count()} cores, {args.seconds} s per "
          f"cell, PgBouncer {args.server_sessions} server sessions, {args.repeat} run(s): "
          "median (worst)")
    print(f"{'clients':>8}{'through PgBouncer':>22}{'direct':>16}{'ratio':>16}{'goal':>8}")
    for n in clients:
        cell = runs[n]
        ratios = [p / d for p, d in cell]
        pooled_rates = [p for p, _ in cell]
        print(f"{n:>8}{f'{statistics.median(pooled_rates):.0f} ({min(pooled_rates):.0f})':>22}"
              f"{statistics.median(d for _, d in cell):>16.0f}"
              f"{f'{statistics.median(ratios):.2f} ({min(ratios):.2f})':>16}"
              f"{f'>= {GOAL:g}':>8}  {'met' if min(ratios) >= GOAL else 'MISSED'}")


if __name__ == "__main__":
    main()
