"""Live-balance push: latency, fan-out throughput, memory per socket, vs three baselines.

All in one bounded run on loopback, printed as one table, each figure with its baseline
from the same run:

  A. balance-server, 2 instances sharing PostgreSQL + Redis, N sockets, real debits over
     HTTP at R/s: debit-request -> frame latency p50/p99 (an upper bound on commit -> frame,
     since it includes the HTTP request and the commit), then the same fan-out with frames
     injected into Redis at R/s (no HTTP, no DB: the workload the baselines can run too).
  B. one process of each: balance-server, a bare `websockets` broadcast server (same Redis
     subscription per account, `websockets.broadcast`), python-socketio (aiohttp +
     AsyncRedisManager): S idle sockets -> memory per socket; then frames injected as fast
     as Redis takes them -> frames delivered per second.
  C. python-socketio, 2 instances, N sockets, R emits/s through its Redis manager.
  D. polling every 5 s (GET /v1/me) while debits run: DB transactions/s and staleness.

Load generators are raw asyncio clients (handshake and frame parsing by hand, uvloop),
several processes, on the same 2 cores as the servers, PostgreSQL and Redis: they compete
for CPU, which the table says.

  --redis cluster: scenario A only, twice: on one Redis, then on a three-master Redis Cluster
     (sharded pub/sub), side by side, with what each debit costs the servers, PostgreSQL and
     Redis in CPU (the inputs of docs/scaling.md).

  BENCH_GC_CENSUS=1 (diagnosis; it slows the servers): each server prints to stderr what
     generation 2 holds at the start of every full collection (by type, and its largest
     containers), every collection over 3 ms (wall and CPU time), and every time its event
     loop ran a 5 ms timer over 3 ms late.
  BENCH_GC_GARBAGE=1 (diagnosis): each server prints, by type, the cyclic garbage each
     collection found (what reference counting could not free).

    python bench/push.py [--sockets 10000] [--rate 1000] [--seconds 8] [--clients 4]
                         [--redis single|cluster] [--repeat 3]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import collections
import contextlib
import gc
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.debit import cpu_seconds, postgres_cpu  # noqa: E402 (needs the path above)

PREFIX = "bench"
SERVICE_KEY = "sk_bench_" + "x" * 24
TOKEN_SECRET = "bench-token-secret-" + "y" * 32
WELCOME = 10**11
STATS_FLUSH = 11.0  # PostgreSQL backends report their counters within 10 s of going idle
FANOUT_RATE = 4000.0  # changes/s offered in B (x10 sockets per account = frames/s offered)

# ================================================================ raw clients


class RawWs(asyncio.Protocol):
    """A WebSocket client socket that only counts frames and reads their timestamps."""

    def __init__(self, host: str, path: str, sink: ClientStats, sio: bool, sync: bool) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.sink = sink
        self.sio = sio
        self.sync = sync
        self.buf = b""
        self.open = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.account = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        self.sink.lost += 1

    def send_text(self, data: bytes) -> None:
        # Client frames must be masked; a zero mask leaves the payload as is.
        assert self.transport is not None and len(data) < 126
        self.transport.write(bytes((0x81, 0x80 | len(data), 0, 0, 0, 0)) + data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            buf = buf[end + 4 :]
            if self.sio:
                self.send_text(b'40{"account":"' + self.account.encode() + b'"}')
            if not self.ready.done():
                self.ready.set_result(True)
        pos, n = 0, len(buf)
        sink = self.sink
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if b1 == 126:
                if n - pos < 4:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif b1 == 127:
                if n - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n - pos < head + b1:
                break
            payload = buf[pos + head : pos + head + b1]
            pos += head + b1
            opcode = b0 & 0x0F
            if opcode == 1:
                if self.sio and payload[:1] != b"4":
                    if payload == b"2":  # engine.io ping
                        self.send_text(b"3")
                    continue
                sink.frame(payload)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(bytes((0x8A, 0x80 | len(payload), 0, 0, 0, 0)) + payload)
            elif opcode == 8 and self.transport is not None:
                self.transport.close()
        self.buf = buf[pos:]


@dataclass
class ClientStats:
    recording: bool = False
    frames: int = 0
    lost: int = 0
    latencies: array.array[int] = field(default_factory=lambda: array.array("q"))

    def frame(self, payload: bytes) -> None:
        if not self.recording:
            return
        self.frames += 1
        i = payload.find(b'"reason":"t=')
        if i >= 0:
            j = payload.find(b'"', i + 12)
            self.latencies.append(time.time_ns() - int(payload[i + 12 : j]))


async def clients_role(spec: dict[str, Any]) -> None:
    """Open every socket in `spec`, then obey start/stop/exit lines on stdin."""
    loop = asyncio.get_running_loop()
    stats = ClientStats()
    conns: list[RawWs] = []
    sem = asyncio.Semaphore(100)
    sio = spec["kind"] == "sio"
    from server.auth import mint_token

    async def one(port: int, account: str) -> None:
        async with sem:
            if spec["kind"] == "ours":
                tok = mint_token(TOKEN_SECRET, account, 3600)[0]
                path = f"/v1/ws?token={tok}"
            elif sio:
                path = "/socket.io/?EIO=4&transport=websocket"
            else:
                path = f"/ws?account={account}"
            proto = RawWs("127.0.0.1", path, stats, sio, spec["kind"] == "ours")
            proto.account = account
            for attempt in range(5):
                try:
                    await loop.create_connection(lambda: proto, "127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    if await proto.ready:
                        conns.append(proto)

    await asyncio.gather(*(one(port, acct) for port, acct in spec["sockets"]))
    if spec["kind"] == "ours":
        # Like the JS client: a sync every 30 s, at a random phase per socket.
        async def syncer(proto: RawWs) -> None:
            await asyncio.sleep(random.uniform(0, 30))
            while proto.transport is not None and not proto.transport.is_closing():
                proto.send_text(b'{"type":"sync","versions":{}}')
                await asyncio.sleep(30)

        syncs = [asyncio.create_task(syncer(p)) for p in conns]
    print(json.dumps({"ready": len(conns)}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).strip():
        if line == b"start":
            stats.frames, stats.latencies, stats.recording = 0, array.array("q"), True
        elif line == b"stop":
            stats.recording = False
            print(
                json.dumps(
                    {
                        "frames": stats.frames,
                        "lost": stats.lost,
                        "lat": base64.b64encode(stats.latencies.tobytes()).decode(),
                    }
                ),
                flush=True,
            )
        elif line == b"exit":
            break
    if spec["kind"] == "ours":
        for task in syncs:
            task.cancel()
    for proto in conns:
        if proto.transport is not None:
            proto.transport.abort()


# ================================================================ servers


def ours_role(port: int, database_url: str, redis_url: str) -> None:
    from server import serve
    from server.app import create_app
    from server.config import Settings

    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BALANCE_SERVICE_KEYS": SERVICE_KEY,
        "BALANCE_TOKEN_SECRET": TOKEN_SECRET,
        "BALANCE_WELCOME_CREDITS": str(WELCOME),
    }
    # Scenario D has ~30 pollers per account: the per-account limit on /v1/me is for one
    # person's tabs, not for a load generator.
    settings = Settings.from_env(
        env, port=port, channel_prefix=PREFIX, ws_max_sockets_per_account=1000, db_pool_size=10,
        rate_limits="me=",
    )
    # (wall-clock start, ms, generation, CPU ms): the wall time is what the event loop waits,
    # the CPU time what the collection itself costs (on 2 shared cores, a collection that
    # loses its core meanwhile waits for the rest of the other process's time slice).
    pauses: list[tuple[float, float, int, float]] = []
    started: list[float] = [0.0, 0.0, 0.0]
    census = bool(os.environ.get("BENCH_GC_CENSUS"))
    garbage = bool(os.environ.get("BENCH_GC_GARBAGE"))
    if garbage:
        gc.set_debug(gc.DEBUG_SAVEALL)  # what each collection freed, counted by on_gc

    def on_gc(phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if phase == "start":
            if census and generation == 2:
                print_census()
            started[:] = time.perf_counter(), time.time(), time.thread_time()
        else:
            ms = (time.perf_counter() - started[0]) * 1000
            cpu_ms = (time.thread_time() - started[2]) * 1000
            if ms >= 1.0 or generation == 2:  # every full collection counts, however short
                pauses.append((started[1], ms, generation, cpu_ms))
            if garbage and gc.garbage:
                kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
                print(f"# garbage (gen {generation}): {len(gc.garbage)} objects, "
                      f"{kinds.most_common(12)}", file=sys.stderr, flush=True)
                gc.garbage.clear()
            if ms > (3 if census else 20):
                print(f"# GC pause {ms:.0f} ms (gen {generation}, {cpu_ms:.1f} ms CPU, "
                      f"{info['collected']} collected) at {time.time():.1f}",
                      file=sys.stderr, flush=True)

    def print_census() -> None:
        """BENCH_GC_CENSUS=1: what a full collection is about to walk (the objects that
        reached generation 2 since the last freeze), by type, and the largest containers."""
        objects = gc.get_objects(2)
        by_type = collections.Counter(type(o).__qualname__ for o in objects)
        sizes = sorted(((len(o), type(o).__qualname__) for o in objects
                        if isinstance(o, (dict, list, set, frozenset, tuple))), reverse=True)
        print(f"# gen-2 census at {time.time():.1f}: {len(objects)} objects, "
              f"young {gc.get_count()}; {by_type.most_common(12)}; largest {sizes[:5]}",
              file=sys.stderr, flush=True)
        del objects

    gc.callbacks.append(on_gc)
    # The production configuration (serve.py): uvloop, httptools, our WebSocket protocol.
    server = serve.server(create_app(settings), settings)
    if census:  # and how late the event loop runs a 5 ms timer (its stalls, whatever the cause)
        serving = server.serve

        async def serve_watched(sockets: list[socket.socket] | None = None) -> None:
            async def watch() -> None:
                while True:
                    started = time.perf_counter()
                    cpu = time.thread_time()
                    await asyncio.sleep(0.005)
                    late = (time.perf_counter() - started) * 1000 - 5
                    cpu_ms = (time.thread_time() - cpu) * 1000
                    if late > 3:
                        print(f"# loop late {late:.0f} ms ({cpu_ms:.1f} ms CPU) at "
                              f"{time.time():.1f}", file=sys.stderr, flush=True)

            task = asyncio.create_task(watch())
            try:
                await serving(sockets)
            finally:
                task.cancel()

        server.serve = serve_watched  # type: ignore[method-assign]
    try:
        server.run()
    finally:  # uvicorn re-raises the SIGINT it stopped on
        print(json.dumps({"gc": pauses}), flush=True)  # read by Proc.stop()


async def bare_role(port: int, redis_url: str) -> None:
    """The baseline: websockets.broadcast fed by one Redis subscription per account."""
    import redis.asyncio as aioredis
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{PREFIX}:bare-keepalive")
    by_account: dict[str, set[ServerConnection]] = {}
    prefix = f"{PREFIX}:acct:"

    async def pump() -> None:
        async for msg in pubsub.listen():
            conns = by_account.get(msg["channel"].decode()[len(prefix) :])
            if conns:
                broadcast(conns, msg["data"], text=True)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        account = ws.request.path.partition("account=")[2]
        conns = by_account.get(account)
        if conns is None:
            conns = by_account[account] = set()
            await pubsub.subscribe(prefix + account)
        conns.add(ws)
        try:
            await ws.wait_closed()
        finally:
            conns.discard(ws)

    task = asyncio.create_task(pump())
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096) as server:
        await server.serve_forever()
    task.cancel()


def sio_role(port: int, redis_url: str) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=socketio.AsyncRedisManager(redis_url),
        transports=["websocket"],
        cors_allowed_origins="*",
    )

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, str]) -> None:
        await sio.enter_room(sid, auth["account"])

    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, print=None, backlog=4096)


# ================================================================ the orchestra


class Proc:
    """A child process of ours, spoken to over stdin/stdout lines."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def read(self, timeout: float = 120) -> dict[str, Any]:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise RuntimeError(f"child {self.popen.args!r} exited")
            with contextlib.suppress(ValueError):
                result: dict[str, Any] = json.loads(line)
                return result
        raise TimeoutError

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> list[Pause]:
        """End the child; the collector pauses a server reported on its way out."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        assert self.popen.stdout is not None
        for line in self.popen.stdout.read().splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                return [Pause(float(t), float(ms), int(g), float(cpu))
                        for t, ms, g, cpu in json.loads(line)["gc"]]
        return []


@dataclass(frozen=True)
class Pause:
    """One collection a server reported: when it began (wall clock), how long (wall and the
    process's CPU time), which generation."""

    at: float
    ms: float
    generation: int
    cpu_ms: float


def in_windows(pauses: list[Pause], windows: Sequence[tuple[float, float]]) -> list[Pause]:
    """The pauses that began inside any of these (wall-clock) windows."""
    return [p for p in pauses if any(start <= p.at <= end for start, end in windows)]


def longest(pauses: list[Pause], *, cpu: bool = False) -> float:
    return max((p.cpu_ms if cpu else p.ms for p in pauses), default=0.0)


def gc_note(name: str, pauses: list[Pause]) -> str:
    """`name`: n full (gen-2) collections, the longest pause of any generation."""
    full = [p for p in pauses if p.generation == 2]
    return (f"{name} {len(full)} gen-2 collections (longest {longest(full):.1f} ms), "
            f"longest pause {longest(pauses):.1f} ms ({longest(pauses, cpu=True):.1f} ms CPU)")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Result:
    frames: int
    seconds: float
    lat_ms: list[float]
    lost: int
    window: tuple[float, float] = (0.0, 0.0)  # wall clock

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    def pct(self, p: float) -> float:
        if not self.lat_ms:
            return float("nan")
        return statistics.quantiles(self.lat_ms, n=1000)[int(p * 10) - 1]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.lat_ms) if self.lat_ms else float("nan")


class Clients:
    """Several client processes sharing the sockets of one scenario."""

    def __init__(self, kind: str, sockets: list[tuple[int, str]], processes: int) -> None:
        random.shuffle(sockets)
        self.procs = []
        for i in range(processes):
            spec = {"kind": kind, "sockets": sockets[i::processes]}
            self.procs.append(Proc("--role", "clients", "--spec", json.dumps(spec)))
        self.ready = sum(p.read(300)["ready"] for p in self.procs)

    def measure(self, seconds: float, during: Callable[[], None] | None = None) -> Result:
        for p in self.procs:
            p.send("start")
        opened = time.time()
        print(f"# window opens at {opened:.1f}", file=sys.stderr, flush=True)
        started = time.monotonic()
        if during is not None:
            during()
        else:
            time.sleep(seconds)
        elapsed = time.monotonic() - started
        print(f"# window closes at {time.time():.1f}", file=sys.stderr, flush=True)
        time.sleep(0.3)  # frames in flight at the end still count, the window does not grow
        for p in self.procs:
            p.send("stop")
        frames, lost, lat = 0, 0, list[float]()
        for p in self.procs:
            r = p.read()
            frames += r["frames"]
            lost += r["lost"]
            raw = array.array("q")
            raw.frombytes(base64.b64decode(r["lat"]))
            lat.extend(x / 1e6 for x in raw)
        return Result(frames, elapsed, lat, lost, (opened, opened + elapsed + 0.3))

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.send("exit")
        for p in self.procs:
            try:
                p.popen.wait(20)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()


# ---------------------------------------------------------------- load: debits over raw HTTP


class RawHttp:
    """One keep-alive HTTP/1.1 connection, requests written by hand (cheap for 2 cores)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, auth: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


@dataclass
class DebitLog:
    sent: dict[tuple[str, int], int] = field(default_factory=dict)  # (account, version) -> ns
    statuses: list[int] = field(default_factory=list)
    http_ms: list[float] = field(default_factory=list)


async def drive_debits(
    ports: list[int], accounts: list[str], rate: float, seconds: float, log: DebitLog
) -> None:
    """Debits at `rate`/s, alternating instances, each reason carrying its send time."""
    conns: asyncio.Queue[RawHttp] = asyncio.Queue()
    for i in range(48):
        conns.put_nowait(await RawHttp.open(ports[i % len(ports)]))
    run = secrets.token_hex(4)
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        conn = await conns.get()
        account = random.choice(accounts)
        sent = time.time_ns()
        body = b'{"amount":1,"reason":"t=%d","idempotency_key":"%s-%d"}' % (sent, run.encode(), i)
        try:
            status, resp = await conn.request(
                "POST", f"/v1/accounts/{account}/debit", SERVICE_KEY, body
            )
        finally:
            conns.put_nowait(conn)
        log.statuses.append(status)
        log.http_ms.append((time.time_ns() - sent) / 1e6)
        if status == 200:
            i = resp.find(b'"version":', resp.find(b'"account"'))
            version = int(resp[i + 10 : resp.find(b",", i)].strip().rstrip(b"}"))
            log.sent[(account, version)] = sent

    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    while not conns.empty():
        conns.get_nowait().close()


async def inject_redis(
    redis_url: str, accounts: list[str], rate: float, seconds: float, versions: dict[str, int]
) -> int:
    """Balance frames straight into the account channels, as a committed change would be
    (SPUBLISH on a Redis Cluster, as the cluster broker does)."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    from server.push.broker.cluster import seeds

    client: Any
    if redis_url.startswith("redis+cluster://"):
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds(redis_url)[0]])
    else:
        client = aioredis.Redis.from_url(redis_url)
    sharded = isinstance(client, RedisCluster)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    batch = max(1, int(rate / 200))  # 200 pipelines a second
    try:
        while (elapsed := loop.time() - start) < seconds:
            due = int(elapsed * rate) if rate else sent + 500
            if due <= sent:
                await asyncio.sleep(0.005 if rate else 0)
                continue
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(min(due - sent, batch if rate else 500)):
                    account = random.choice(accounts)
                    v = versions[account] = versions.get(account, 10**9) + 1
                    frame = (
                        b'{"type":"balance","account_id":"%s","balance":1,"held":0,'
                        b'"available":1,"version":%d,"change":{"kind":"usage","amount":-1,'
                        b'"reason":"t=%d","transaction_id":%d,"hold_id":null}}'
                        % (account.encode(), v, time.time_ns(), v)
                    )
                    channel = f"{PREFIX}:acct:{account}"
                    if sharded:
                        pipe.spublish(channel, frame)
                    else:
                        pipe.publish(channel, frame)
                    sent += 1
                await pipe.execute()
    finally:
        await client.aclose()
    return sent


async def inject_sio(redis_url: str, accounts: list[str], rate: float, seconds: float) -> int:
    """Emits through python-socketio's own Redis manager (write-only), 8 emitters in parallel."""
    import socketio

    loop = asyncio.get_running_loop()
    start = loop.time()
    counter = [0, 10**9]  # sent, version

    async def emitter() -> None:
        mgr = socketio.AsyncRedisManager(redis_url, write_only=True)
        while (elapsed := loop.time() - start) < seconds:
            if rate and int(elapsed * rate) <= counter[0]:
                await asyncio.sleep(0.002)
                continue
            account = random.choice(accounts)
            counter[0] += 1
            counter[1] += 1
            v = counter[1]
            data = {
                "type": "balance", "account_id": account, "balance": 1, "held": 0,
                "available": 1, "version": v,
                "change": {"kind": "usage", "amount": -1, "reason": f"t={time.time_ns()}",
                           "transaction_id": v, "hold_id": None},
            }  # fmt: skip
            await mgr.emit("balance", data, room=account)

    await asyncio.gather(*(emitter() for _ in range(8)))
    return counter[0]


async def db_xacts(database_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        n: int = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        return n
    finally:
        await conn.close()


def debit_transactions(ports: Sequence[int]) -> int:
    """Transactions the servers' debits took so far: one per group-commit batch (a lone
    debit is a batch of one), from each server's /metrics. Not one per debit: subtracting
    the debits from PostgreSQL's count took away more than they cost, and the push reads
    (and the polls) read 0."""
    total = 0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        found = re.search(r"^balance_group_commit_batch_size_count (\S+)$", text, re.MULTILINE)
        total += int(float(found.group(1))) if found else 0
    return total


async def poll(
    ports: list[int], accounts: list[str], clients: int, seconds: float, interval: float
) -> tuple[list[tuple[str, float, int]], int, list[float]]:
    """`clients` browsers polling GET /v1/me every `interval` s; (account, t_ns, version)."""
    from server.auth import mint_token

    seen: list[tuple[str, float, int]] = []
    errors = 0
    http_ms: list[float] = []
    conns: asyncio.Queue[RawHttp] = asyncio.Queue()
    for i in range(64):
        conns.put_nowait(await RawHttp.open(ports[i % len(ports)]))
    tokens = {a: mint_token(TOKEN_SECRET, a, 3600)[0] for a in accounts}
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def browser(account: str) -> None:
        nonlocal errors
        await asyncio.sleep(random.uniform(0, interval))
        while loop.time() < end:
            conn = await conns.get()
            t0 = time.time_ns()
            try:
                status, body = await conn.request("GET", "/v1/me", tokens[account])
            finally:
                conns.put_nowait(conn)
            t1 = time.time_ns()
            http_ms.append((t1 - t0) / 1e6)
            if status != 200:
                errors += 1
            else:
                i = body.find(b'"version":')
                j = i + 10
                while body[j : j + 1].isdigit() or body[j : j + 1] == b" ":
                    j += 1
                seen.append((account, t1, int(body[i + 10 : j])))
            await asyncio.sleep(max(0.0, interval - (t1 - t0) / 1e9))

    await asyncio.gather(*(browser(accounts[i % len(accounts)]) for i in range(clients)))
    while not conns.empty():
        conns.get_nowait().close()
    return seen, errors, http_ms


def staleness(seen: list[tuple[str, float, int]], log: DebitLog, until_ns: int) -> list[float]:
    """Per poll-observer, the delay between each change's send time and its first sighting."""
    by_account: dict[str, list[tuple[int, int]]] = {}
    for account, t, version in seen:
        by_account.setdefault(account, []).append((version, int(t)))
    out = []
    for (account, version), sent in log.sent.items():
        if sent > until_ns:
            continue
        polls = sorted(by_account.get(account, []), key=lambda p: p[1])
        # first poll after the send that shows this version or later
        times = [t for v, t in polls if v >= version and t >= sent]
        if times:
            out.append((min(times) - sent) / 1e6)
    return out


# ================================================================ main


@dataclass
class Figure:
    """One row: our figure, the baseline's from the same run, and the goals on either."""

    name: str
    ours: float
    base: float | None
    unit: str
    value_goal: tuple[str, float] | None = None  # ("<=", 10.0): on our figure itself
    ratio_goal: tuple[str, float] | None = None  # on ours / baseline

    @property
    def ratio(self) -> float | None:
        return self.ours / self.base if self.base else None

    def cells(self) -> tuple[str, str, str, str, str]:
        return (self.name, fmt(self.ours, self.unit),
                fmt(self.base, self.unit) if self.base is not None else "-",
                f"{self.ratio:.3f}" if self.ratio is not None else "-", self.goals())

    def goals(self) -> str:
        parts = []
        if self.value_goal:
            parts.append(f"{self.value_goal[0]} {fmt(self.value_goal[1], self.unit)}")
        if self.ratio_goal:
            parts.append(f"ratio {self.ratio_goal[0]} {self.ratio_goal[1]:g}")
        return ", ".join(parts) or "-"


def fmt(x: float | None, unit: str) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if unit == "ms":
        return f"{x:.2f} ms"
    if unit == "KiB":
        return f"{x:.1f} KiB"
    return f"{x:,.1f}" if abs(x) < 100 else f"{x:,.0f}"


def worst(values: list[float], goal: tuple[str, float] | None) -> float:
    """The run farthest from the goal's side (the largest for <=, the smallest for >=)."""
    clean = [v for v in values if not math.isnan(v)] or [float("nan")]
    if goal is not None and goal[0] == ">=":
        return min(clean)
    return max(clean)


def met(value: float, goal: tuple[str, float] | None) -> str:
    if goal is None:
        return ""
    ok = value <= goal[1] if goal[0] == "<=" else value >= goal[1]
    return "met" if ok else "MISSED"


def summary(runs: list[list[Figure]]) -> str:
    """Each figure's median and worst over the runs, and whether the worst meets its goal."""
    rows: list[tuple[str, ...]] = [("figure", "ours median", "ours worst", "baseline median",
                                    "ratio median", "ratio worst", "goal", "worst run")]
    for i, first in enumerate(runs[0]):
        same = [run[i] for run in runs]
        ours = [f.ours for f in same]
        ratios = [r for f in same if (r := f.ratio) is not None]
        # Without a goal of its own, our figure is worst in the ratio goal's direction.
        ours_worst = worst(ours, first.value_goal or first.ratio_goal)
        ratio_worst = worst(ratios, first.ratio_goal) if ratios else None
        verdicts = [v for v in (met(ours_worst, first.value_goal),
                                met(ratio_worst, first.ratio_goal) if ratio_worst is not None
                                else "") if v]
        bases = [f.base for f in same if f.base is not None]
        rows.append((
            first.name, fmt(statistics.median(ours), first.unit), fmt(ours_worst, first.unit),
            fmt(statistics.median(bases), first.unit) if bases else "-",
            f"{statistics.median(ratios):.3f}" if ratios else "-",
            f"{ratio_worst:.3f}" if ratio_worst is not None else "-", first.goals(),
            " and ".join(verdicts) or "-"))
    return table(rows)


def table(rows: Sequence[tuple[str, ...]]) -> str:
    width = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(width)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole comparison this many times; median and worst")
    parser.add_argument("--sockets", type=int, default=10_000, help="N for scenarios A and C")
    parser.add_argument("--per-account", type=int, default=5, help="sockets per account")
    parser.add_argument("--rate", type=float, default=1000.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="each measured window")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--fanout-sockets", type=int, default=2000, help="S for scenario B")
    parser.add_argument("--pollers", type=int, default=2000, help="polling browsers (D)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--redis", choices=("single", "cluster"), default="single",
                        help="cluster: scenario A on one Redis and on a Redis Cluster")
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        import uvloop

        with contextlib.suppress(KeyboardInterrupt):
            if args.role == "clients":
                uvloop.run(clients_role(json.loads(args.spec)))
            elif args.role == "ours":
                ours_role(args.port, args.db, args.redis_url)
            elif args.role == "bare":
                uvloop.run(bare_role(args.port, args.redis_url))
            elif args.role == "sio":
                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
                sio_role(args.port, args.redis_url)
        return 0

    import uvloop

    started = time.monotonic()
    scenario = orchestrate if args.redis == "single" else compare_brokers
    runs = [uvloop.run(scenario(args, run + 1)) for run in range(args.repeat)]
    if args.repeat > 1:
        print(f"\n# {args.repeat} runs: each figure's median and worst run")
        print(summary(runs))
    print(f"# total bench time {time.monotonic() - started:.0f} s")
    return 0


async def orchestrate(args: argparse.Namespace, run: int) -> list[Figure]:
    import asyncpg

    from server.dev import servers as devservers
    from server.schema import migrate

    pg = devservers.start_postgres()
    rd = devservers.start_redis()
    procs: list[Proc] = []
    figures: list[Figure] = []
    notes: list[str] = []
    t_run = time.monotonic()

    def server(role: str) -> tuple[Proc, int]:
        port = devservers.free_port()
        proc = Proc("--role", role, "--port", str(port), "--db", pg.url, "--redis-url", rd.url)
        procs.append(proc)
        wait_port(port)
        return proc, port

    def stop(proc: Proc) -> list[Pause]:
        procs.remove(proc)
        return proc.stop()

    try:
        conn = await asyncpg.connect(pg.url)
        await migrate(conn)
        await conn.close()
        n, per = args.sockets, args.per_account
        accounts = [f"b{i:05d}" for i in range(max(1, n // per))]
        print(
            f"# run {run}: {n} sockets over {len(accounts)} accounts, {args.rate:.0f} changes/s, "
            f"{args.seconds:.0f} s windows, {args.clients} client processes, "
            f"{os.cpu_count()} CPUs shared by servers, PostgreSQL, Redis and clients",
            flush=True,
        )

        # ---------------------------------------------------------------- A: ours x2
        (a, pa), (b, pb) = server("ours"), server("ours")
        await asyncio.sleep(1.0)
        rss0 = {a.pid: rss_kib(a.pid), b.pid: rss_kib(b.pid)}
        t0, connects_from = time.monotonic(), time.time()
        sockets = [((pa, pb)[i % 2], accounts[i % len(accounts)]) for i in range(n)]
        clients = Clients("ours", sockets, args.clients)
        print(f"# A: {clients.ready}/{n} sockets open in {time.monotonic() - t0:.1f} s", flush=True)
        await asyncio.sleep(2.0)
        connects_until = time.time()
        mem_ours_scale = sum(rss_kib(p) - rss0[p] for p in rss0) / max(1, clients.ready)

        # Warm-up, unmeasured: the first requests after a ramp of thousands of sockets set off
        # Python's deferred full garbage collection (hundreds of ms; reported by the servers).
        await asyncio.to_thread(
            lambda: asyncio.run(drive_debits([pa, pb], accounts, args.rate, 3.0, DebitLog()))
        )
        log = DebitLog()
        await asyncio.sleep(STATS_FLUSH)  # the connect-time snapshots are counted before x0
        x0, b0 = await db_xacts(pg.url), debit_transactions([pa, pb])

        def run_debits() -> None:
            asyncio.run(drive_debits([pa, pb], accounts, args.rate, args.seconds, log))

        cpu0 = {p: cpu_seconds(p) for p in rss0}
        e2e = await asyncio.to_thread(clients.measure, args.seconds, run_debits)
        cpu_a = {p: (cpu_seconds(p) - cpu0[p]) / e2e.seconds for p in rss0}
        await asyncio.sleep(STATS_FLUSH)
        x1, b1 = await db_xacts(pg.url), debit_transactions([pa, pb])
        x_elapsed = e2e.seconds + STATS_FLUSH + 0.3
        debits_ok = sum(1 for s in log.statuses if s == 200)
        push_queries = max(0, (x1 - x0) - (b1 - b0)) / x_elapsed
        expected = debits_ok * per
        http_p99 = statistics.quantiles(log.http_ms, n=100)[98]
        notes.append(
            f"A: {debits_ok}/{len(log.statuses)} debits ok at "
            f"{len(log.statuses) / e2e.seconds:.0f}/s; "
            f"{e2e.frames} frames received of ~{expected} expected "
            f"(debit HTTP p50 {statistics.median(log.http_ms):.1f} ms, "
            f"p99 {http_p99:.1f} ms); "
            f"server CPU {', '.join(f'{c:.0%}' for c in cpu_a.values())}; "
            f"{e2e.lost} sockets lost"
        )

        versions: dict[str, int] = {}

        def run_inject() -> None:
            asyncio.run(inject_redis(rd.url, accounts, args.rate, args.seconds, versions))

        injected = await asyncio.to_thread(clients.measure, args.seconds, run_inject)
        clients.close()

        # ---------------------------------------------------------------- D: polling
        pollers = min(args.pollers, n)
        log_d = DebitLog()
        x0, b0 = await db_xacts(pg.url), debit_transactions([pa, pb])
        poll_seconds = args.seconds + 5.0

        async def debits_then_idle() -> None:
            await drive_debits([pa, pb], accounts, args.rate, args.seconds, log_d)

        t_poll0 = time.time_ns()
        poll_task = asyncio.create_task(
            asyncio.to_thread(
                lambda: asyncio.run(poll([pa, pb], accounts, pollers, poll_seconds, 5.0))
            )
        )
        await asyncio.to_thread(lambda: asyncio.run(debits_then_idle()))
        seen, poll_errors, poll_http = await poll_task
        await asyncio.sleep(STATS_FLUSH)
        x1, b1 = await db_xacts(pg.url), debit_transactions([pa, pb])
        poll_queries = max(0, (x1 - x0) - (b1 - b0)) / poll_seconds
        stale = staleness(seen, log_d, t_poll0 + int(args.seconds * 1e9))
        gc_a = [stop(a), stop(b)]
        connecting = [in_windows(g, [(connects_from, connects_until)]) for g in gc_a]
        measured = [in_windows(g, [e2e.window, injected.window]) for g in gc_a]
        gc_connect = max(longest(g) for g in connecting)
        gc_window = max(longest(g) for g in measured)
        gc_connect_cpu = max(longest(g, cpu=True) for g in connecting)
        gc_window_cpu = max(longest(g, cpu=True) for g in measured)
        notes.append("A GC, per process: " + "; ".join(
            gc_note(f"#{i + 1} while sockets connect", c) + ", " + gc_note("in the windows", m)
            for i, (c, m) in enumerate(zip(connecting, measured, strict=True))))

        # ---------------------------------------------------------------- B: one process each
        s = args.fanout_sockets
        fan_accounts = accounts[: max(1, s // 10)]
        fan: dict[str, tuple[float, Result, float]] = {}
        gc_fan = 0.0
        for role in ("ours", "bare", "sio"):
            proc, port = server(role)
            await asyncio.sleep(1.0)
            before = rss_kib(proc.pid)
            clients = Clients(
                role, [(port, fan_accounts[i % len(fan_accounts)]) for i in range(s)], args.clients
            )
            await asyncio.sleep(2.0)
            mem = (rss_kib(proc.pid) - before) / max(1, clients.ready)
            if role == "sio":

                def flood() -> None:
                    asyncio.run(inject_sio(rd.url, fan_accounts, FANOUT_RATE, args.seconds))

            else:

                def flood() -> None:
                    asyncio.run(inject_redis(rd.url, fan_accounts, FANOUT_RATE, args.seconds, {}))

            c0 = cpu_seconds(proc.pid)
            maxed = await asyncio.to_thread(clients.measure, args.seconds, flood)
            cpu = (cpu_seconds(proc.pid) - c0) / maxed.seconds
            fan[role] = (mem, maxed, maxed.fps / max(cpu, 0.01))
            notes.append(
                f"B/{role}: {clients.ready}/{s} sockets, {mem:.1f} KiB each, "
                f"{maxed.fps:,.0f} frames/s delivered at server CPU {cpu:.0%}"
            )
            clients.close()
            pauses = stop(proc)
            if role == "ours":
                fan_pauses = in_windows(pauses, [maxed.window])
                gc_fan = longest(fan_pauses)
                notes.append(gc_note("B/ours GC in the window:", fan_pauses))

        # ---------------------------------------------------------------- C: socket.io x2
        (c1, p1), (c2, p2) = server("sio"), server("sio")
        await asyncio.sleep(1.0)
        sockets = [((p1, p2)[i % 2], accounts[i % len(accounts)]) for i in range(n)]
        clients = Clients("sio", sockets, args.clients)
        notes.append(f"C: socket.io {clients.ready}/{n} sockets open")
        await asyncio.sleep(2.0)

        def run_sio() -> None:
            asyncio.run(inject_sio(rd.url, accounts, args.rate, args.seconds))

        sio_run = await asyncio.to_thread(clients.measure, args.seconds, run_sio)
        clients.close()
        stop(c1)
        stop(c2)

        # ---------------------------------------------------------------- the figures
        ours_b, bare_b, sio_b = fan["ours"], fan["bare"], fan["sio"]
        per_k_ours = push_queries / n * 1000
        per_k_poll = poll_queries / pollers * 1000
        poll_mean = statistics.fmean(stale) if stale else float("nan")
        figures.extend([
            Figure(f"A debit->frame p50 ({n} sockets, 2 instances, {args.rate:.0f} debits/s)",
                   e2e.pct(50), None, "ms"),
            Figure("A debit->frame p99 (incl. HTTP + commit) vs the debit's own HTTP p99",
                   e2e.pct(99), http_p99, "ms", ratio_goal=("<=", 1.0)),
            Figure(f"A publish->frame p99 ({args.rate:.0f}/s injected) vs socket.io (C)",
                   injected.pct(99), sio_run.pct(99), "ms", ratio_goal=("<=", 0.5)),
            Figure("A publish->frame p50 (same)", injected.pct(50), sio_run.pct(50), "ms"),
            Figure(f"A longest GC pause per process while {n} sockets connect",
                   gc_connect, None, "ms", value_goal=("<=", 5.0)),
            Figure("A longest GC pause per process in the measured windows",
                   gc_window, None, "ms", value_goal=("<=", 5.0)),
            Figure("A the same two, in the collection's CPU time: while sockets connect",
                   gc_connect_cpu, None, "ms", value_goal=("<=", 5.0)),
            Figure("A the same two, in the collection's CPU time: in the windows",
                   gc_window_cpu, None, "ms", value_goal=("<=", 5.0)),
            Figure(f"B frames/s per server CPU-second, one process ({s} sockets) vs bare "
                   "websockets", ours_b[2], bare_b[2], "", ratio_goal=(">=", 1.3)),
            Figure("B frames/s per server CPU-second vs python-socketio",
                   ours_b[2], sio_b[2], "", ratio_goal=(">=", 3.0)),
            Figure(f"B frames/s delivered ({FANOUT_RATE * 10:,.0f}/s offered) vs "
                   "python-socketio", ours_b[1].fps, sio_b[1].fps, ""),
            Figure(f"B publish->frame p99 at {FANOUT_RATE * 10:,.0f} frames/s offered vs "
                   "bare websockets", ours_b[1].pct(99), bare_b[1].pct(99), "ms",
                   ratio_goal=("<=", 1.0)),
            Figure("B publish->frame p99 (same) vs python-socketio",
                   ours_b[1].pct(99), sio_b[1].pct(99), "ms", ratio_goal=("<=", 0.333)),
            Figure("B longest GC pause in the window (ours)", gc_fan, None, "ms",
                   value_goal=("<=", 5.0)),
            Figure(f"B memory per idle socket ({s}) vs bare websockets", ours_b[0], bare_b[0],
                   "KiB", value_goal=("<=", 8.0), ratio_goal=("<=", 1.0)),
            Figure(f"A memory per idle socket ({n // 2}/instance) vs socket.io (B)",
                   mem_ours_scale, sio_b[0], "KiB", value_goal=("<=", 8.0)),
            Figure("D DB transactions/s per 1,000 clients: push (sync every 30 s) vs 5 s "
                   "polling", per_k_ours, per_k_poll, ""),
            Figure("D average staleness: push (debit->frame mean) vs 5 s polling",
                   e2e.mean, poll_mean, "ms"),
        ])
        notes.append(
            f"D: {pollers} pollers (GET /v1/me every 5 s) for {poll_seconds:.0f} s, "
            f"{len(seen)} polls, {poll_errors} errors, poll HTTP p50 "
            f"{statistics.median(poll_http) if poll_http else float('nan'):.1f} ms; "
            f"{len(stale)} changes seen by pollers"
        )
        notes.append(
            f"C: socket.io delivered {sio_run.fps:,.0f} frames/s vs ours {injected.fps:,.0f} at "
            f"{args.rate:.0f} changes/s injected"
        )
        print()
        print(table([f.cells() for f in figures]))
        print()
        for note in notes:
            print("# " + note)
        dropped = [
            line
            for line in (await asyncio.to_thread(Path(rd.log_path).read_text)).splitlines()
            if "output buffer" in line
        ]
        print(f"# Redis dropped {len(dropped)} subscribers for output-buffer limits")
        print(f"# run {run} took {time.monotonic() - t_run:.0f} s", flush=True)
        return figures
    finally:
        for proc in procs:
            proc.stop()
        rd.close()
        pg.close()


# ================================================================ --redis cluster


async def wal_bytes(database_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        return int(n)
    finally:
        await conn.close()


async def broker_run(
    args: argparse.Namespace,
    database_url: str,
    postmaster: int,
    backend: Any,
    accounts: list[str],
) -> dict[str, Any]:
    """Two instances of ours on this Redis (or cluster): debits, then injected frames."""
    from server.dev import servers as devservers

    nodes = [backend] if isinstance(backend, devservers.RedisServer) else backend.nodes
    procs: list[Proc] = []
    try:
        ports = []
        for _ in range(2):
            port = devservers.free_port()
            procs.append(Proc("--role", "ours", "--port", str(port), "--db", database_url,
                              "--redis-url", backend.url))
            wait_port(port)
            ports.append(port)
        await asyncio.sleep(1.0)
        n = args.sockets
        clients = Clients("ours", [(ports[i % 2], accounts[i % len(accounts)]) for i in range(n)],
                          args.clients)
        await asyncio.to_thread(lambda: asyncio.run(
            drive_debits(ports, accounts, args.rate, 3.0, DebitLog())))  # warm-up
        log = DebitLog()

        def run_debits() -> None:
            asyncio.run(drive_debits(ports, accounts, args.rate, args.seconds, log))

        def redis_cpu() -> float:
            return sum(cpu_seconds(node.pid) for node in nodes if node.pid)

        async def costs() -> tuple[float, float, float, int]:
            return (sum(cpu_seconds(pr.pid) for pr in procs), postgres_cpu(postmaster),
                    redis_cpu(), await wal_bytes(database_url))

        before = await costs()
        e2e = await asyncio.to_thread(clients.measure, args.seconds, run_debits)
        after = await costs()
        sent: list[int] = []

        def run_inject() -> None:
            sent.append(asyncio.run(
                inject_redis(backend.url, accounts, args.rate, args.seconds, {})))

        r0 = redis_cpu()
        injected = await asyncio.to_thread(clients.measure, args.seconds, run_inject)
        r1 = redis_cpu()
        clients.close()
    finally:
        for proc in procs:
            proc.stop()
    ok = max(1, sum(1 for st in log.statuses if st == 200))
    print(f"# {backend.url.partition(':')[0]}: {ok}/{len(log.statuses)} debits ok, "
          f"{e2e.frames} frames (~{ok * args.per_account} expected), {e2e.lost} sockets lost; "
          f"{injected.frames} frames of {sum(sent)} injected", flush=True)
    return {
        "e2e": e2e, "injected": injected,
        "server_us": 1e6 * (after[0] - before[0]) / ok,
        "pg_us": 1e6 * (after[1] - before[1]) / ok,
        "redis_us": 1e6 * (after[2] - before[2]) / ok,
        "wal": (after[3] - before[3]) / ok,
        "inject_redis_us": 1e6 * (r1 - r0) / max(1, sum(sent)),
    }


async def compare_brokers(args: argparse.Namespace, run: int) -> list[Figure]:
    """Scenario A on one Redis, then on a three-master Redis Cluster: latency side by side,
    and each debit's CPU cost in our servers, PostgreSQL and Redis (all nodes)."""
    import asyncpg

    from server.dev import servers as devservers
    from server.schema import migrate

    n, per = args.sockets, args.per_account
    accounts = [f"b{i:05d}" for i in range(max(1, n // per))]
    print(f"# run {run}: scenario A, {n} sockets over {len(accounts)} accounts, "
          f"{args.rate:.0f} debits/s, {args.seconds:.0f} s windows, on one Redis then on a "
          f"3-master Redis Cluster; {os.cpu_count()} CPUs shared by all", flush=True)
    t_run = time.monotonic()
    pg = devservers.start_postgres()
    found: dict[str, dict[str, Any]] = {}
    try:
        conn = await asyncpg.connect(pg.url)
        await migrate(conn)
        await conn.close()
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        for kind in ("single", "cluster"):
            backend: devservers.RedisServer | devservers.RedisCluster = (
                devservers.start_redis() if kind == "single" else devservers.start_redis_cluster()
            )
            try:
                found[kind] = await broker_run(args, pg.url, postmaster, backend, accounts)
            finally:
                backend.close()
    finally:
        pg.close()
    one, many = found["single"], found["cluster"]
    rate = f"{args.rate:.0f}/s"
    figures = [
        Figure(f"A debit->frame p50 ({n} sockets, 2 instances, {rate}): cluster vs one Redis",
               many["e2e"].pct(50), one["e2e"].pct(50), "ms"),
        Figure("A debit->frame p99 (incl. HTTP + commit): cluster vs one Redis",
               many["e2e"].pct(99), one["e2e"].pct(99), "ms"),
        Figure(f"A publish->frame p50 ({rate} injected): cluster vs one Redis",
               many["injected"].pct(50), one["injected"].pct(50), "ms"),
        Figure("A publish->frame p99 (same): cluster vs one Redis",
               many["injected"].pct(99), one["injected"].pct(99), "ms"),
        Figure("A server CPU-us per debit, both instances (HTTP, commit, publish, fan-out)",
               many["server_us"], one["server_us"], ""),
        Figure("A PostgreSQL CPU-us per debit (postmaster and backends)",
               many["pg_us"], one["pg_us"], ""),
        Figure("A PostgreSQL WAL bytes per debit", many["wal"], one["wal"], ""),
        Figure("A Redis CPU-us per debit (publish + 5-socket fan-in to 2 subscribers, "
               "all nodes)", many["redis_us"], one["redis_us"], ""),
        Figure("A Redis CPU-us per injected frame (all nodes)",
               many["inject_redis_us"], one["inject_redis_us"], ""),
    ]
    print()
    print(table([("figure", "cluster", "one Redis", "ratio", "goal"),
                 *(f.cells() for f in figures)]))
    print(f"# run {run} took {time.monotonic() - t_run:.0f} s", flush=True)
    return figures


if __name__ == "__main__":
    sys.exit(main())
