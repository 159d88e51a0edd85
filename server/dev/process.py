"""What the throwaway servers share: child processes we hold by PID, and a safety net.

Every server is a direct child process: close() signals that PID and waits, and an atexit
hook closes whatever a crashed caller left running. Each runs in a session of its own, so a
terminal's Ctrl-C reaches only our process: `dev` stops its server first and then these,
instead of the servers dying under it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

FORCE_EMBEDDED_ENV = "BALANCE_DEV_FORCE_EMBEDDED"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HOST = "127.0.0.1"


class DevServerError(RuntimeError):
    """A throwaway server could not be started."""


class Closable(Protocol):
    def close(self) -> None: ...


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def force_embedded() -> bool:
    return os.environ.get(FORCE_EMBEDDED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    return tail or f"(log {path} is empty)"


def terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send `sig` to the process's own PID, escalate to SIGKILL, and reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()



_live: list[Closable] = []
_live_lock = threading.Lock()


def track(server: Closable) -> None:
    """Close `server` at exit if its owner has not."""
    with _live_lock:
        if not any(s is server for s in _live):
            _live.append(server)


def untrack(server: Closable) -> None:
    with _live_lock:
        _live[:] = [s for s in _live if s is not server]


@atexit.register
def _close_all() -> None:
    with _live_lock:
        servers = list(reversed(_live))
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


class Throwaway:
    """What both servers share: a `with` block closes them, and close() forgets them."""

    _owned_root: Path | None

    def close(self) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """Out of the atexit net, and its temp dir removed if it made one."""
        untrack(self)
        root, self._owned_root = self._owned_root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
