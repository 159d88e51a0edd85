"""Throwaway PostgreSQL and Redis servers for `balance-server dev`, the tests and the benchmarks.

`python -m server.dev.servers` starts both, prints one JSON line
`{"database_url": ..., "redis_url": ...}` and keeps them until SIGTERM/SIGINT/stdin EOF.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import threading

from server.dev.postgres import PostgresServer, start_postgres
from server.dev.process import FORCE_EMBEDDED_ENV, DevServerError, free_port
from server.dev.redis import RedisCluster, RedisServer, start_redis, start_redis_cluster

__all__ = [
    "FORCE_EMBEDDED_ENV",
    "DevServerError",
    "PostgresServer",
    "RedisCluster",
    "RedisServer",
    "free_port",
    "start_postgres",
    "start_redis",
    "start_redis_cluster",
]


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
