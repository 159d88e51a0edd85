"""App webhooks: what the outbox costs the debit path, and how fast events reach the app.

1. Debit throughput (wrk, 32 clients, distinct accounts) of one `balance-server serve`
   process in three configurations, alternated round by round on the same database:
   no app webhook URL (nothing is written), a URL with the default event types (debits
   only cross thresholds now and then), and a URL subscribed to `transaction.created`
   (every debit writes an event, which the same process then delivers). Printed as
   debits/s and as the ratio to "off" measured in the same round.
2. Delivery latency: debits committed at a fixed 1,000/s and 250/s (pgbench -R, each
   writing a `transaction.created` event), delivered by the server to a local receiver;
   latency is the receiver's arrival time minus the event's transaction timestamp.

    python bench/outbox.py [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.debit import DISTINCT_ACCOUNTS, need, seed, start_server, wrk
from server.dev import servers as devservers

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
RATES = (1000, 250)  # events/s for the latency runs: the issue's, and one a process keeps up with


class Receiver:
    """The app's endpoint: 204 at once, recording when each event arrived."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        now = time.time()
        self.count += 1
        if body:
            created = json.loads(body)["timestamp"]
            self.latencies.append(now - datetime.fromisoformat(created).timestamp())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def serve_receiver(receiver: Receiver, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def pgbench_at_rate(pg: devservers.PostgresServer, seconds: int, rate: int) -> None:
    binary = str(pg.bin_dir / "pgbench") if pg.bin_dir else need("pgbench")
    script = (
        f"\\set a random(1, {DISTINCT_ACCOUNTS})\n"
        "\\set k random(1, 9000000000000000000)\n"
        "SELECT result FROM balance.balance_post('d' || :a, 0, 'lat-' || :k, '\\x00'::bytea,"
        " 'usage', -1, 'bench', NULL::jsonb, NULL::timestamptz, 'available');\n")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    # The server running beside subscribed transaction.created (its `settings` row).
    subprocess.run([binary, "-n", "-M", "prepared", "-c", "4", "-j", "2", "-R", str(rate),
                    "-T", str(seconds), "-f", f.name, pg.url],
                   capture_output=True, text=True, check=True)
    os.unlink(f.name)


async def forget_events(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE balance.event_attempts, balance.events")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    receiver = Receiver()
    receiver_port = devservers.free_port()
    serve_receiver(receiver, receiver_port)
    hook = {"BALANCE_APP_WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/hooks",
            "BALANCE_APP_WEBHOOK_SECRET": SECRET}
    configs = {
        "off": {},
        "default events": hook,
        "transaction.created": {**hook, "BALANCE_APP_WEBHOOK_EVENTS": "transaction.created"},
    }
    results: dict[str, list[float]] = {name: [] for name in configs}
    ratios: dict[str, list[float]] = {name: [] for name in configs}
    with devservers.start_postgres() as pg, devservers.start_redis() as redis:
        asyncio.run(seed(pg.url))
        for r in range(args.rounds):
            for name, extra in configs.items():
                # A backlog another configuration left would be delivered during this one.
                asyncio.run(forget_events(pg.url))
                port = devservers.free_port()
                server = start_server(pg, redis, port, extra_env=extra)
                try:
                    wrk(port, 8, False, 1, f"warm{r}{len(name)}")
                    results[name].append(wrk(port, 32, False, args.seconds, f"r{r}{len(name)}")[0])
                finally:
                    server.terminate()
                    server.wait(timeout=60)
            for name in configs:
                ratios[name].append(results[name][-1] / results["off"][-1])

        # Latency: the server only delivers; pgbench commits the events at fixed rates.
        latency: dict[int, list[float]] = {}
        for rate in RATES:
            asyncio.run(forget_events(pg.url))
            port = devservers.free_port()
            server = start_server(pg, redis, port, extra_env=configs["transaction.created"])
            try:
                receiver.latencies.clear()
                pgbench_at_rate(pg, args.seconds, rate)
                time.sleep(3)
                latency[rate] = sorted(receiver.latencies)
            finally:
                server.terminate()
                server.wait(timeout=60)
    print()
    print(f"debit throughput with the outbox, {os.cpu_count()} cores, wrk 32 clients, "
          f"distinct accounts, {args.seconds} s per cell, {args.rounds} rounds")
    print(f"{'configuration':<22}{'debits/s median':>17}{'worst':>9}"
          f"{'vs off median':>15}{'worst':>8}")
    for name in configs:
        print(f"{name:<22}{statistics.median(results[name]):>17.0f}{min(results[name]):>9.0f}"
              f"{statistics.median(ratios[name]):>15.2f}{min(ratios[name]):>8.2f}")
    for rate, lat in latency.items():
        if not lat:
            print(f"delivery at {rate} events/s: nothing arrived")
            continue
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        print(f"delivery at {rate} events/s for {args.seconds} s (+3 s): {len(lat)} of"
              f" {rate * args.seconds} events arrived, commit -> receiver p50 {p50:.1f} ms,"
              f" p99 {p99:.1f} ms, max {lat[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
