"""The command line: migrate, reconcile, token, and `dev` starting from nothing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import asyncpg
import httpx
import jwt
import pytest

import server
from server.dev.servers import free_port
from tests.conftest import key


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )


def test_migrate_twice_from_the_command_line(migrated: str) -> None:
    for _ in range(2):
        done = run_cli("migrate", env={"DATABASE_URL": migrated})
        assert done.returncode == 0, done.stderr
        assert "schema applied" in done.stdout


def test_migrate_refuses_a_transaction_pooler_and_takes_the_direct_url(migrated: str) -> None:
    """The release step carries serve's BALANCE_DB_POOLER beside the direct URL it gives
    migrate: the URL decides. A pooler's URL is refused, saying what to give instead."""
    direct = run_cli("migrate", env={"DATABASE_URL": migrated, "BALANCE_DB_POOLER": "transaction"})
    assert direct.returncode == 0, direct.stderr
    pooled = run_cli("migrate", env={"DATABASE_URL": migrated + "?pgbouncer=true"})
    assert pooled.returncode == 2 and "direct" in pooled.stderr, pooled.stderr


def test_version() -> None:
    done = run_cli("--version", env={})
    assert done.returncode == 0 and done.stdout == f"balance-server {server.__version__}\n"
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert server.__version__ == pyproject["project"]["version"]


def test_missing_database_url_names_it() -> None:
    done = run_cli("migrate", env={"DATABASE_URL": ""})
    assert done.returncode == 2 and "DATABASE_URL" in done.stderr


async def test_reconcile_catches_a_corrupted_row(
    migrated: str, db: asyncpg.Pool, client: httpx.AsyncClient, account: str
) -> None:
    await client.post(f"/v1/accounts/{account}/credit",
                      json={"amount": 9, "kind": "grant", "idempotency_key": key()})
    clean = run_cli("reconcile", env={"DATABASE_URL": migrated})
    assert clean.returncode == 0, clean.stdout + clean.stderr
    await db.execute("UPDATE accounts SET balance = balance + 1 WHERE account_id = $1", account)
    try:
        dirty = run_cli("reconcile", env={"DATABASE_URL": migrated})
        assert dirty.returncode == 1
        assert f"MISMATCH {account}: balance=10 ledger_sum=9" in dirty.stdout
    finally:
        await db.execute("UPDATE accounts SET balance = balance - 1 WHERE account_id = $1", account)
    await db.execute("UPDATE accounts SET held = held + 2 WHERE account_id = $1", account)
    try:
        dirty = run_cli("reconcile", env={"DATABASE_URL": migrated})
        assert dirty.returncode == 1 and "held=2 active_holds=0" in dirty.stdout
    finally:
        await db.execute("UPDATE accounts SET held = held - 2 WHERE account_id = $1", account)


def test_token_command() -> None:
    secret = "s" * 40
    done = run_cli("token", "user_42", env={"BALANCE_TOKEN_SECRET": secret})
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"],
                        audience="balance-server:user")
    assert claims["sub"] == "user_42" and claims["exp"] > time.time()
    assert run_cli("token", "x", env={"BALANCE_TOKEN_SECRET": ""}).returncode == 2


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_dev_starts_from_nothing_and_stops_cleanly(stop: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # A session of its own, so the Ctrl-C below reaches its whole process group as a
    # terminal's would.
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "dev", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            banner.append(line)
            if "service key" in line:
                break
        text = "".join(banner)
        service_key = text.split("service key")[1].split()[0]
        database_url = text.split("DATABASE_URL")[1].split()[0]
        redis_url = text.split("REDIS_URL")[1].split()[0]
        assert service_key.startswith("sk_dev_")
        assert f"http://127.0.0.1:{port}/?account=demo-user" in text
        base = f"http://127.0.0.1:{port}"
        console = re.search(r"console +(\S+) +\(operator key: (\S+)\)", text)
        assert console is not None and console[1] == f"{base}/console", text
        operator_key = console[2]
        for _ in range(100):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {service_key}"}
        acct = httpx.get(f"{base}/v1/accounts/dev-check", headers=headers).json()
        assert acct["balance"] == 100  # dev's welcome credits
        r = httpx.post(f"{base}/dev/spend", json={"account_id": "dev-check", "amount": 5})
        assert r.status_code == 200 and r.json()["account"]["balance"] == 95
        assert httpx.get(f"{base}/v1/prices", headers=headers).json()["generate_image"] == 5
        signed_in = httpx.post(f"{base}/console/session", json={"key": operator_key})
        assert signed_in.status_code == 200 and signed_in.json()["scope"] == "admin"
    finally:
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal signals the whole group
        else:
            proc.send_signal(signal.SIGTERM)  # a process manager signals the process
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130, 143), out
    # The server stopped before its Redis and PostgreSQL did, so it never saw them go.
    assert "broker connection lost" not in out, out
    assert "database unreachable" not in out, out
    # The throwaway PostgreSQL and Redis went away with it.
    for url in (database_url, redis_url):
        server_port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", server_port)) != 0, url


def test_dev_stays_on_loopback_and_off_other_databases_unless_told() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    exposed = subprocess.run([sys.executable, "-m", "server.cli", "dev", "--host", "0.0.0.0"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert exposed.returncode == 2 and "--i-know" in exposed.stderr
    foreign = subprocess.run(
        [sys.executable, "-m", "server.cli", "dev"], capture_output=True, text=True, timeout=60,
        env={**env, "DATABASE_URL": "postgresql://app@prod.example/credits"})
    assert foreign.returncode == 2 and "DATABASE_URL" in foreign.stderr
    assert "--i-know" in foreign.stderr


def dev_banner(*args: str, env: dict[str, str]) -> tuple[int | None, str]:
    """Run `dev` until it prints its banner or exits: (its exit code, or None when it was
    serving and was stopped, and what it printed)."""
    with subprocess.Popen([sys.executable, "-m", "server.cli", "dev", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:  # it exited
                return proc.wait(timeout=30), "".join(lines)
            lines.append(line)
            if "stripe secret" in line:  # the banner's last line
                break
        os.killpg(proc.pid, signal.SIGINT)  # it is serving: stop it and its throwaway servers
        lines.append(proc.communicate(timeout=30)[0])
        return None, "".join(lines)


def test_dev_stays_off_a_redis_it_did_not_start_unless_told() -> None:
    """A foreign REDIS_URL is refused like a foreign DATABASE_URL (dev would publish on that
    Redis's channels), and its password is never printed."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    foreign = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    code, out = dev_banner("--port", str(free_port()), env={**env, "REDIS_URL": foreign})
    assert code == 2, out
    assert "REDIS_URL" in out and "--i-know" in out and "hunter2" not in out


def test_dev_never_prints_a_password(migrated: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # The test PostgreSQL trusts loopback: the password is carried, never checked.
    with_password = migrated.replace("://", "://postgres:pg-s3cret@", 1) \
        if "@" not in migrated else migrated.replace("@", ":pg-s3cret@", 1)
    _, out = dev_banner("--i-know", "--no-redis", "--port", str(free_port()),
                        env={**env, "DATABASE_URL": with_password,
                             "REDIS_URL": "redis://:redis-s3cret@prod.example:6379/0",
                             "BALANCE_APP_WEBHOOK_URL": "https://hook:wh-s3cret@example.test/in",
                             "BALANCE_APP_WEBHOOK_SECRET": "whsec_" + "A" * 32})
    assert "DATABASE_URL" in out and "postgres:***@" in out, out
    assert "(none: in-memory fan-out)" in out  # --no-redis: whatever REDIS_URL says
    assert "s3cret" not in out, out


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:pw@db.example:5432/credits", "postgresql://app:***@db.example:5432/credits"),
    ("redis://:pw@cache.example:6379/0", "redis://:***@cache.example:6379/0"),
    ("redis+cluster://u:pw@h1:7000,h2:7001", "redis+cluster://u:***@h1:7000,h2:7001"),
    ("postgresql://db.example/credits?user=app&password=pw&sslmode=require",
     "postgresql://db.example/credits?user=app&password=***&sslmode=require"),
    ("redis://cache.example:6379/0", "redis://cache.example:6379/0"),
])
def test_urls_are_printed_without_their_password(url: str, shown: str) -> None:
    from server.cli import masked

    assert masked(url) == shown
