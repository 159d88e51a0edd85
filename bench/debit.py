"""HTTP debit throughput of one `balance-server serve` process vs pgbench on the same SQL.

Both sides run the same `balance_post(...)` debit against the same throwaway PostgreSQL in
the same run, at 8 and 32 concurrent clients, on distinct accounts and on one hot account.
The HTTP side is driven by wrk (C, so the load generator costs little CPU on this 2-core
machine); pgbench uses prepared statements like asyncpg does. Prints a table of debits/s and
the ratio HTTP / pgbench.

    python bench/debit.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.dev import servers as devservers
from server.schema import migrate

DISTINCT_ACCOUNTS = 2000
START_BALANCE = 10**11

PGBENCH_SCRIPT = """\
\\set a random(1, {accounts})
\\set k random(1, 9000000000000000000)
SELECT result FROM balance_post({account_expr}, 0, 'pgb-' || :k, '\\x00'::bytea, 'usage', -1,
  'bench', NULL::jsonb, NULL::timestamptz, 'available');
"""

WRK_SCRIPT = """\
counter = 0
tid = 0
threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed(os.time() + tid * 7919)
end
function request()
  counter = counter + 1
  local acct
  if {hot} then acct = "hot" else acct = "d" .. math.random(1, {accounts}) end
  local body = '{{"amount":1,"reason":"bench","idempotency_key":"wrk-{run}-'
    .. tid .. '-' .. counter .. '"}}'
  return wrk.format("POST", "/v1/accounts/" .. acct .. "/debit", nil, body)
end
"""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"{tool} not found: `apt-get install -y {tool}` (make bench does it)")
    return path


async def seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        ids = [f"d{i}" for i in range(1, DISTINCT_ACCOUNTS + 1)] + ["hot"]
        await conn.executemany(
            "SELECT balance_post($1, 0, 'seed', '\\x00'::bytea, 'grant', $2, 'seed', NULL, NULL,"
            " 'available')",
            [(i, START_BALANCE) for i in ids],
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def pgbench(pg: devservers.PostgresServer, clients: int, hot: bool, seconds: int) -> float:
    binary = str(pg.bin_dir / "pgbench") if pg.bin_dir else need("pgbench")
    script = PGBENCH_SCRIPT.format(
        accounts=DISTINCT_ACCOUNTS, account_expr="'hot'" if hot else "'d' || :a"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    out = subprocess.run(
        [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds),
         "-f", f.name, pg.url],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(f.name)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed and int(failed.group(1)):
        sys.exit(f"pgbench had failures:\n{out}")
    match = re.search(r"tps = ([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def wrk(port: int, clients: int, hot: bool, seconds: int, run: str) -> float:
    script = WRK_SCRIPT.format(hot="true" if hot else "false", accounts=DISTINCT_ACCOUNTS, run=run)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    out = subprocess.run(
        [need("wrk"), "-t", "2", "-c", str(clients), "-d", f"{seconds}s", "-s", f.name,
         "-H", f"Authorization: Bearer {SERVICE_KEY}", "-H", "Content-Type: application/json",
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(f.name)
    if "Non-2xx" in out:
        sys.exit(f"wrk saw errors:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


SERVICE_KEY = "sk_bench_" + secrets.token_urlsafe(16)


def start_server(pg: devservers.PostgresServer, redis: devservers.RedisServer,
                 port: int, batch_inflight: int | None = None,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis.url,
        "BALANCE_SERVICE_KEYS": SERVICE_KEY,
        "BALANCE_TOKEN_SECRET": secrets.token_urlsafe(48),
        "BALANCE_DB_POOL_SIZE": "32",
        "PORT": str(port),
    }
    if batch_inflight is not None:
        env["BALANCE_DB_BATCH_INFLIGHT"] = str(batch_inflight)
    env.update(extra_env or {})
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--batch-inflight", type=int, default=None,
                        help="BALANCE_DB_BATCH_INFLIGHT for the server (default: its own)")
    args = parser.parse_args()
    with devservers.start_postgres() as pg, devservers.start_redis() as redis:
        asyncio.run(seed(pg.url))
        port = devservers.free_port()
        server = start_server(pg, redis, port, args.batch_inflight)
        rows = []
        try:
            wrk(port, 8, False, 2, "warmup")
            for hot in (False, True):
                for clients in (8, 32):
                    base = pgbench(pg, clients, hot, args.seconds)
                    ours = wrk(port, clients, hot, args.seconds, f"{int(hot)}{clients}")
                    rows.append((("hot account" if hot else "distinct accounts"), clients,
                                 ours, base))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    inflight = args.batch_inflight or "default"
    print(f"debit throughput, {os.cpu_count()} cores, {args.seconds} s per cell, "
          "one `balance-server serve` process (uvicorn, REDIS_URL set, "
          f"batch in-flight {inflight}) vs pgbench")
    print(f"{'workload':<20}{'clients':>8}{'HTTP debits/s':>16}{'pgbench tps':>14}{'ratio':>8}")
    for name, clients, ours, base in rows:
        print(f"{name:<20}{clients:>8}{ours:>16.0f}{base:>14.0f}{ours / base:>8.2f}")


if __name__ == "__main__":
    main()
