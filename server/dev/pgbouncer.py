"""A throwaway PgBouncer in transaction mode in front of a throwaway PostgreSQL: what
Supabase's and Neon's pooled URLs are, for the tests and the pooler benchmark.

Debian's `pgbouncer` package (1.18): no prepared statements across transactions, and any
startup parameter it does not know is refused, so a client that works here works there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.dev.postgres import PG_USER, PostgresServer, pg_os_user
from server.dev.process import (
    HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevServerError,
    Throwaway,
    free_port,
    log_tail,
    terminate,
    track,
)


def pgbouncer_executable() -> Path | None:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return Path(found) if os.access(found, os.X_OK) else None


@dataclass
class PgBouncer(Throwaway):
    """A running PgBouncer; `url(database)` is a pooled URL for one of the server's databases."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owned_root: Path | None = field(default=None, repr=False)

    def url(self, database: str) -> str:
        # `pgbouncer=true`, as Prisma spells it: the server reads it as "transaction pooler".
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{database}?pgbouncer=true"

    def close(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, signal.SIGINT, STOP_TIMEOUT)  # SIGINT: PgBouncer's safe shutdown
        self._forget()


def start_pgbouncer(postgres: PostgresServer, pool_size: int = 20) -> PgBouncer:
    """PgBouncer on a free port in front of `postgres`, transaction mode, trusting loopback."""
    executable = pgbouncer_executable()
    if executable is None:
        raise DevServerError("no pgbouncer: `apt-get install pgbouncer` (make test does)")
    root = Path(tempfile.mkdtemp(prefix="balance-pgbouncer-"))
    port = free_port()
    log_path = root / "pgbouncer.log"
    (root / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={HOST} port={postgres.port} user={PG_USER}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
logfile = {log_path}
; what psql and libpq send; asyncpg sends none of it
ignore_startup_parameters = extra_float_digits
""")
    user = pg_os_user()
    command = [str(executable), str(root / "pgbouncer.ini")]
    if user is not None:  # PgBouncer refuses to run as root
        os.chown(root, user.pw_uid, user.pw_gid)
        root.chmod(0o755)
        command[1:1] = ["-u", user.pw_name]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    bouncer = PgBouncer(port, log_path, process, root)
    track(bouncer)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            bouncer.close()
            raise DevServerError(f"pgbouncer exited with code {process.returncode}. Log tail "
                                 f"({log_path}):\n{log_tail(log_path)}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return bouncer
        except OSError:
            time.sleep(0.05)
    bouncer.close()
    raise DevServerError(f"pgbouncer did not listen on {HOST}:{port} in {START_TIMEOUT:.0f} s")
