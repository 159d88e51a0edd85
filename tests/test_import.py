"""`balance-server import`: a credits table moved in through the ledger, once, however often
it is run; a bad file writes nothing; a dry run writes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import IN_SCHEMA

CATALOG = {"prices": {"generate_image": 5},
           "plans": {"basic": {"allowance": 10}, "plus": {"allowance": 20}}}


@pytest.fixture(scope="module")
def env(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The server's database and catalog: all the command needs (no service key)."""
    catalog = tmp_path_factory.mktemp("import") / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    return {
        "DATABASE_URL": migrated,
        "BALANCE_CATALOG_FILE": str(catalog),
        # Imported accounts must not get these on top of what they had.
        "BALANCE_WELCOME_CREDITS": "100",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }


async def run_import(env: dict[str, str], *args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "import", *map(str, args),
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def accounts(n: int) -> list[str]:
    prefix = uuid.uuid4().hex[:10]
    return [f"imp-{prefix}-{i}" for i in range(n)]


async def state(db: asyncpg.Pool, ids: Sequence[str]) -> list[tuple[object, ...]]:
    """Each account's balance, plan and ledger rows; none for an account that is not there."""
    rows = await db.fetch(
        "SELECT a.account_id, a.balance, a.plan,"
        " (SELECT count(*) FROM transactions t WHERE t.account_id = a.account_id) AS ledger"
        " FROM accounts a WHERE a.account_id = ANY($1) ORDER BY a.account_id", list(ids))
    return [tuple(r.values()) for r in rows]


def csv_file(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("\n".join(["account_id,balance,plan,expires_at", *lines]) + "\n")
    return path


async def test_a_csv_imports_once_however_often_it_runs(
    env: dict[str, str], db: asyncpg.Pool, tmp_path: Path
) -> None:
    a, b, c = accounts(3)
    expires = (datetime.now(UTC) + timedelta(days=90)).replace(microsecond=0)
    path = csv_file(tmp_path / "credits.csv", [
        f"{a},250,,", f"{b},40,basic,{expires.isoformat()}", f"{c},0,,"])
    code, out, err = await run_import(env, path)
    assert code == 0, out + err
    assert "3 rows, imported 3, already imported 0, conflicts 0, errors 0, credits 290" in out
    # No welcome credits; b's plan granted its allowance (10) beside the imported 40.
    before = await state(db, [a, b, c])
    assert [(r[0], r[1], r[2]) for r in before] == [(a, 250, None), (b, 50, "basic"),
                                                    (c, 0, None)]
    lots = await db.fetch(
        "SELECT l.kind, l.amount, l.priority, l.expires_at, t.reason FROM credit_lots l"
        " JOIN transactions t ON t.id = l.transaction_id"
        " WHERE l.account_id = $1 ORDER BY l.id", b)
    assert [tuple(r.values()) for r in lots[:1]] == [("grant", 40, 50, expires, "import")]
    assert [(r["kind"], r["amount"]) for r in lots[1:]] == [("allowance", 10)]

    code, out, err = await run_import(env, path)
    assert code == 0, out + err
    assert "imported 0, already imported 3, conflicts 0, errors 0, credits 0" in out
    assert await state(db, [a, b, c]) == before


async def test_jsonl_imports_and_a_different_balance_later_is_a_conflict(
    env: dict[str, str], db: asyncpg.Pool, tmp_path: Path
) -> None:
    a, b = accounts(2)
    first = tmp_path / "credits.jsonl"
    first.write_text(f'{{"account_id": "{a}", "balance": 7}}\n\n'
                     f'{{"account_id": "{b}", "balance": 9, "plan": null}}\n')
    code, out, err = await run_import(env, first)
    assert code == 0, out + err
    assert "imported 2," in out and "credits 16" in out
    before = await state(db, [a, b])

    again = tmp_path / "again.ndjson"
    again.write_text(f'{{"account_id": "{a}", "balance": 7}}\n'
                     f'{{"account_id": "{b}", "balance": 99}}\n')
    code, out, err = await run_import(env, again)
    assert code == 1
    assert "imported 0, already imported 1, conflicts 1" in out
    assert f"line 2: {b} was imported before with another balance or expires_at" in err
    assert await state(db, [a, b]) == before


async def test_one_bad_row_and_nothing_is_written(
    env: dict[str, str], db: asyncpg.Pool, tmp_path: Path
) -> None:
    ids = accounts(9)
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    path = csv_file(tmp_path / "bad.csv", [
        f"{ids[0]},10,,",          # good
        f"{ids[1]},1.5,,",         # line 3: a float
        f"{ids[2]},ten,,",         # line 4: a word
        f"{ids[3]},-4,,",          # line 5: negative
        "not an id!,5,,",          # line 6
        f"{ids[4]},5,gold,",       # line 7: no such plan
        f"{ids[0]},3,,",           # line 8: twice
        f"{ids[5]},5,,{past}",     # line 9: expired
        f"{ids[6]},5,,2030-01-01",  # line 10: no offset
        f"{ids[7]},5",             # line 11: too few fields
    ])
    code, out, err = await run_import(env, path)
    assert code == 1
    for line, says in [(3, "'1.5' is not a whole number"), (4, "'ten' is not a whole number"),
                       (5, "'-4' is not a whole number"), (6, "account_id: 'not an id!'"),
                       (7, "plan: 'gold' is not in the catalog"),
                       (8, f"{ids[0]!r} is already on line 2"), (9, "is past"),
                       (10, "has no UTC offset"), (11, "2 fields, the header has 4")]:
        assert f"line {line}: " in err and says in err.split(f"line {line}: ")[1], (line, err)
    assert "nothing was written" in err
    assert "errors 9" in out
    assert await state(db, ids) == []

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(f'{{"account_id": "{ids[8]}", "balance": 5}}\n'
                     f'{{"account_id": "{ids[7]}", "balance": 2.0}}\n'
                     f'{{"account_id": "{ids[6]}", "balance": "3"}}\n'
                     f'{{"account_id": "{ids[5]}", "balance": 3, "credits": 1}}\n')
    code, out, err = await run_import(env, jsonl)
    assert code == 1
    assert "line 2: balance: 2.0 is a float" in err
    assert "line 3: balance: '3' is a str" in err
    assert "line 4: unknown field(s) credits" in err
    assert await state(db, ids) == []


async def test_a_dry_run_says_what_would_happen_and_writes_nothing(
    env: dict[str, str], db: asyncpg.Pool, tmp_path: Path
) -> None:
    a, b = accounts(2)
    path = csv_file(tmp_path / "credits.csv", [f"{a},5,basic,", f"{b},6,,"])
    code, out, err = await run_import(env, "--dry-run", path)
    assert code == 0, out + err
    assert "would import 2, already imported 0, conflicts 0, errors 0, credits 11" in out
    assert "nothing was written" in out
    assert await state(db, [a, b]) == []
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE account_id = ANY($1)",
                             [a, b]) == 0

    code, out, err = await run_import(env, path)
    assert code == 0, out + err
    # A row without a plan leaves the plan alone; another plan is a conflict.
    changed = csv_file(tmp_path / "changed.csv", [f"{a},5,plus,", f"{b},6,,"])
    code, out, err = await run_import(env, "--dry-run", changed)
    assert code == 1
    assert "would import 0, already imported 1, conflicts 1" in out
    assert f"{a} was imported before with another plan" in err


async def test_an_unknown_extension_or_header_is_refused(
    env: dict[str, str], tmp_path: Path
) -> None:
    odd = tmp_path / "credits.txt"
    odd.write_text("account_id,balance\nx,1\n")
    code, _, err = await run_import(env, odd)
    assert code == 2 and "--format" in err
    headless = tmp_path / "credits.csv"
    headless.write_text("user,credits\nx,1\n")
    code, _, err = await run_import(env, headless)
    assert code == 2 and "unknown: user, credits" in err and "missing: account_id, balance" in err


def test_a_hundred_thousand_rows(env: dict[str, str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """30-50 s on a 2-core machine, and 7-9 s to import the same file again (PostgreSQL's
    side of balance_post is most of it): not async, so the suite's 60 s hang guard does not
    fail it on a loaded machine; the command's own timeout bounds it."""
    n = 100_000
    ids = accounts(n)
    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"account_id": "{a}", "balance": {i % 1000}}}\n'
                            for i, a in enumerate(ids)))

    def imported() -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "server.cli", "import", str(path)],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done, time.monotonic() - started

    done, elapsed = imported()
    assert f"{n} rows, imported {n}, already imported 0" in done.stdout
    total = sum(i % 1000 for i in range(n))
    assert f"credits {total}" in done.stdout

    async def count() -> asyncpg.Record | None:
        conn = await asyncpg.connect(env["DATABASE_URL"], server_settings=IN_SCHEMA)
        try:
            return await conn.fetchrow(
                "SELECT count(*) AS accounts, sum(balance) AS credits FROM accounts"
                " WHERE account_id LIKE $1", ids[0].rsplit("-", 1)[0] + "-%")
        finally:
            await conn.close()

    found = asyncio.run(count())
    assert found is not None and (found["accounts"], found["credits"]) == (n, total)
    # The same file again changes nothing.
    again, rerun = imported()
    assert f"{n} rows, imported 0, already imported {n}" in again.stdout
    assert asyncio.run(count()) == found
    with capsys.disabled():
        print(f"\nimport of {n} rows: {elapsed:.1f} s ({n / elapsed:.0f} rows/s); the same "
              f"file again: {rerun:.1f} s, nothing changed\n{done.stdout}{again.stdout}")
