"""HTTP debit throughput of one `balance-server serve` process vs pgbench on the same SQL.

Both sides run the same `balance_post(...)` debit against the same throwaway PostgreSQL in
the same run, at 8 and 32 concurrent clients, on distinct accounts and on one hot account.
The HTTP side is driven by wrk (C, so the load generator costs little CPU on this 2-core
machine); pgbench uses prepared statements like asyncpg does. Prints a table of debits/s and
the ratio HTTP / pgbench.

    python bench/debit.py [--seconds 8] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import statistics
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
SELECT result FROM balance.balance_post({account_expr}, 0, 'pgb-' || :k, '\\x00'::bytea,
  'usage', -1, 'bench', NULL::jsonb, NULL::timestamptz, 'available');
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
            "SELECT balance.balance_post($1, 0, 'seed', '\\x00'::bytea, 'grant', $2, 'seed', NULL,"
            " NULL, 'available')",
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


GOALS = {  # (workload, clients): the least ratio HTTP / pgbench we aim for
    ("distinct accounts", 8): 0.6,
    ("distinct accounts", 32): 1.0,
    ("hot account", 8): 2.0,
    ("hot account", 32): 2.0,
}


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the server (every thread, native frames off) for `seconds`."""
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
         "--duration", str(seconds), "--rate", "250", "--format", "raw", "--nonblocking",
         "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(raw: Path, n: int = 15) -> str:
    """Where the samples were: each function's own share and its share with callees."""
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [re.sub(r" \((.*/)?([^/]+)\)", r" (\2)", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            within[frame] = within.get(frame, 0) + samples
    lines = [f"# py-spy: {total} samples of the server process"]
    for title, table in (("own time", own), ("with callees", within)):
        lines.append(f"# top {n} by {title}:")
        for frame, samples in sorted(table.items(), key=lambda kv: -kv[1])[:n]:
            lines.append(f"#   {samples / max(total, 1):6.1%}  {frame[:110]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure every cell this many times; print median and worst")
    parser.add_argument("--profile", action="store_true",
                        help="sample the server with py-spy during the first distinct x32 cell")
    parser.add_argument("--batch-inflight", type=int, default=None,
                        help="BALANCE_DB_BATCH_INFLIGHT for the server (default: its own)")
    args = parser.parse_args()
    cells = [(hot, clients) for hot in (False, True) for clients in (8, 32)]
    runs: dict[tuple[bool, int], list[tuple[float, float]]] = {cell: [] for cell in cells}
    spied = Path(tempfile.mkdtemp()) / "debit.pyspy"
    with devservers.start_postgres() as pg, devservers.start_redis() as redis:
        asyncio.run(seed(pg.url))
        port = devservers.free_port()
        server = start_server(pg, redis, port, args.batch_inflight)
        try:
            wrk(port, 8, False, 2, "warmup")
            for run in range(args.repeat):
                for hot, clients in cells:
                    base = pgbench(pg, clients, hot, args.seconds)
                    spy = None
                    if args.profile and run == 0 and (hot, clients) == (False, 32):
                        spy = profile(server.pid, args.seconds, spied)
                    ours = wrk(port, clients, hot, args.seconds, f"{run}{int(hot)}{clients}")
                    if spy is not None:
                        spy.wait(timeout=60)
                    runs[hot, clients].append((ours, base))
                    print(f"# run {run + 1}: {'hot' if hot else 'distinct'} x{clients}: "
                          f"{ours:.0f} vs {base:.0f} ({ours / base:.2f})", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    inflight = args.batch_inflight or "default"
    print(f"debit throughput, {os.cpu_count()} cores, {args.seconds} s per cell, "
          "one `balance-server serve` process (uvicorn, REDIS_URL set, "
          f"batch in-flight {inflight}) vs pgbench, {args.repeat} run(s): median (worst)")
    print(f"{'workload':<20}{'clients':>8}{'HTTP debits/s':>22}{'pgbench tps':>16}"
          f"{'ratio':>16}{'goal':>8}  worst run")
    for hot, clients in cells:
        name = "hot account" if hot else "distinct accounts"
        cell = runs[hot, clients]
        debits = [o for o, _ in cell]
        ratios = [o / b for o, b in cell]
        goal = GOALS[name, clients]
        print(f"{name:<20}{clients:>8}"
              f"{f'{statistics.median(debits):.0f} ({min(debits):.0f})':>22}"
              f"{statistics.median(b for _, b in cell):>16.0f}"
              f"{f'{statistics.median(ratios):.2f} ({min(ratios):.2f})':>16}"
              f"{f'>= {goal:g}':>8}  {'met' if min(ratios) >= goal else 'MISSED'}")
    if args.profile:
        print()
        print(top_functions(spied) if spied.exists() else "# py-spy wrote nothing")


if __name__ == "__main__":
    main()
