"""`balance-server serve` as a process of its own, started as a deploy starts it: for the
tests that measure a server from outside (a fresh start, its memory, its CPU)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from server.auth import mint_token
from server.dev import servers as devservers
from server.dev.process import terminate


@dataclass
class Served:
    """One `balance-server serve` process."""

    port: int
    pid: int
    service_key: str
    secret: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, account: str | None = None) -> str:
        url = f"ws://127.0.0.1:{self.port}/v1/ws"
        return url if account is None else f"{url}?token={self.token(account)}"

    def token(self, account: str) -> str:
        return mint_token(self.secret, account, 600)[0]

    def cpu(self) -> float:
        """Seconds of CPU the process has used."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        """The process's resident memory, in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@contextlib.contextmanager
def serving(database_url: str, *, secret: str | None = None, **env: str) -> Iterator[Served]:
    """A fresh server process on its own port and channels, configured only by the
    environment (the defaults unless `env` says otherwise; `secret`: its token secret, to
    share one between instances); stopped by PID on the way out."""
    port = devservers.free_port()
    served = Served(port, 0, "sk_test_" + secrets.token_urlsafe(16),
                    secret or secrets.token_urlsafe(48))
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        env={**os.environ, "DATABASE_URL": database_url, "PORT": str(port),
             "BALANCE_SERVICE_KEYS": served.service_key, "BALANCE_TOKEN_SECRET": served.secret,
             "BALANCE_CHANNEL_PREFIX": f"served-{port}", **env},
        stdout=subprocess.DEVNULL)
    served.pid = proc.pid
    try:
        yield served
    finally:
        terminate(proc, signal.SIGTERM, 15)


async def ready(*served: Served) -> None:
    """Until each answers /readyz 200 (at most 20 s)."""
    async with httpx.AsyncClient() as client:
        for one in served:
            for _ in range(400):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{one.base_url}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"{one.base_url} did not start")
