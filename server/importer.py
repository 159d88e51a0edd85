"""`balance-server import FILE`: an existing credits table moved in, through the ledger.

Each row's balance is one `grant` movement, posted by the SQL that POST /credit posts
(`balance_post`, in group-commit batches) under the account's idempotency key
`system:import` (a prefix the API refuses its callers, and one retention never deletes),
fingerprinted by the row's balance and expiry: a re-run replays, and a row saying something
else for an account already imported is a conflict, never applied. A plan is assigned as PUT
/plan assigns one (`balance_set_plan`), under `system:import:plan`. No welcome credits: the
imported balance is what the account had. The whole file is checked before anything is
written; one bad row and nothing is.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import msgspec

from server import errors
from server.catalog import MAX_CREDITS, Catalog
from server.config import Database
from server.db import pool_options
from server.ledger import Ledger, Outcome, request_hash
from server.messages import ACCOUNT_ID_RULE, is_account_id
from server.plans import Plans

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
COLUMNS = ("account_id", "balance", "plan", "expires_at")
REQUIRED = ("account_id", "balance")
KEY = "system:import"
PLAN_KEY = "system:import:plan"
REASON = "import"
# Spent last among equals, as bought credits are: an old balance's origin is unknown, and
# the customer gets the side of the doubt (schema.sql step 005 did the same).
PRIORITY = 50
CHUNK = 2048  # rows in flight at once (group commit batches them)
PREVIEW_CHUNK = 10_000
SHOWN = 50  # problems printed one by one; the rest are counted


class FileError(Exception):
    """The file as a whole cannot be read as an import (format, header, encoding)."""


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    account_id: str
    balance: int
    plan: str | None
    expires_at: datetime | None

    @property
    def fingerprint(self) -> bytes:
        return request_hash("import", _Credit(self.balance, self.expires_at))

    @property
    def plan_fingerprint(self) -> bytes:
        return request_hash("import-plan", _Plan(self.plan))


class _Credit(msgspec.Struct):
    balance: int
    expires_at: datetime | None


class _Plan(msgspec.Struct):
    plan: str | None


# ---------------------------------------------------------------- reading and checking


def file_format(path: Path, given: str | None) -> str:
    """'csv' or 'jsonl': as given, else by the file's extension."""
    if given is not None:
        return given
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise FileError(f"{path.name}: cannot tell the format from its extension; name it "
                        ".csv, .jsonl or .ndjson, or pass --format csv|jsonl")
    return found


def read(path: Path, fmt: str, plans: Collection[str], now: datetime | None = None,
         ) -> tuple[list[Row], list[str]]:
    """Every row of the file, checked: the good rows, and a 'line N: ...' per bad one."""
    now = now or datetime.now(UTC)
    rows: list[Row] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            records = _csv(f) if fmt == "csv" else _jsonl(f)
            for line, values in records:
                checked = _check(line, values, fmt == "csv", plans, now)
                if isinstance(checked, str):
                    problems.append(f"line {line}: {checked}")
                elif checked.account_id in seen:
                    problems.append(f"line {line}: account_id {checked.account_id!r} is "
                                    f"already on line {seen[checked.account_id]}")
                else:
                    seen[checked.account_id] = line
                    rows.append(checked)
    except OSError as exc:
        raise FileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FileError(f"{path.name} is not UTF-8 text ({exc.reason})") from None
    return rows, problems


def _csv(f: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise FileError("the file is empty: a CSV import starts with a header row")
    names = [h.strip() for h in header]
    _check_columns(names)
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue  # a blank line
        if len(record) != len(names):
            yield reader.line_num, f"{len(record)} fields, the header has {len(names)}"
            continue
        yield reader.line_num, dict(zip(names, record, strict=True))


def _jsonl(f: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for line, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError:
            yield line, "not a JSON value"
            continue
        if not isinstance(value, dict):
            yield line, "not a JSON object"
            continue
        unknown = sorted(set(value) - set(COLUMNS))
        if unknown:
            yield line, f"unknown field(s) {', '.join(unknown)} (known: {', '.join(COLUMNS)})"
            continue
        yield line, value


def _check_columns(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in COLUMNS]
    missing = [n for n in REQUIRED if n not in names]
    if unknown or missing or len(set(names)) != len(names):
        raise FileError(
            f"header: the columns are {', '.join(REQUIRED)} and optionally plan, expires_at"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + (f"; missing: {', '.join(missing)}" if missing else ""))


def _check(line: int, values: dict[str, Any] | str, text: bool, plans: Collection[str],
           now: datetime) -> Row | str:
    """The row, or what is wrong with it. From CSV every value is text."""
    if isinstance(values, str):
        return values
    if text:
        values = {k: (v.strip() or None) for k, v in values.items()}
    account = values.get("account_id")
    if not is_account_id(account):
        return f"account_id: {account!r} is not an account id ({ACCOUNT_ID_RULE})"
    balance = _credits(values.get("balance"), text)
    if isinstance(balance, str):
        return f"balance: {balance}"
    plan = values.get("plan")
    if plan is not None:
        if not isinstance(plan, str):
            return f"plan: {plan!r} is not a plan id"
        if plan not in plans:
            known = ", ".join(sorted(plans)) if plans else "the catalog has no plans"
            return f"plan: {plan!r} is not in the catalog ({known})"
    expires = _expiry(values.get("expires_at"), now)
    if isinstance(expires, str):
        return f"expires_at: {expires}"
    return Row(line, account, balance, plan, expires)


def _credits(value: object, text: bool) -> int | str:
    """Whole credits 0..10^12, or why not."""
    if value is None:
        return "missing"
    if text:
        assert isinstance(value, str)
        if not value.isascii() or not value.isdigit():
            return f"{value!r} is not a whole number of credits (0, 1, 2, ...)"
        number = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        kind = "a float" if isinstance(value, float) else f"a {type(value).__name__}"
        return f"{value!r} is {kind}, not a whole number of credits"
    else:
        number = value
    if not 0 <= number <= MAX_CREDITS:
        return f"{number} is outside 0..10^12"
    return number


def _expiry(value: object, now: datetime) -> datetime | str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{value!r} is not an ISO-8601 timestamp string"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return f"{value!r} is not an ISO-8601 timestamp (e.g. 2030-01-31T00:00:00Z)"
    if at.tzinfo is None:
        return f"{value!r} has no UTC offset (add Z or +hh:mm)"
    if at <= now:
        return f"{value} is past: expired credits have nothing to import"
    return at.astimezone(UTC)


# ---------------------------------------------------------------- writing


@dataclass
class Summary:
    rows: int = 0
    imported: int = 0
    already: int = 0
    conflicts: int = 0
    errors: int = 0
    credits: int = 0  # credits the run added (or, dry, would add)
    existing: int = 0  # accounts that had a balance of their own before: the import adds to it
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self, dry_run: bool) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        verb = "would import" if dry_run else "imported"
        return (f"{'dry run' if dry_run else 'import'}: {self.rows} rows, {verb} "
                f"{self.imported}, already imported {self.already}, conflicts "
                f"{self.conflicts}, errors {self.errors}, credits {self.credits}; "
                f"{self.seconds:.1f} s, {rate:.0f} rows/s")


Progress = Callable[[int], None]


async def preview(pool: asyncpg.Pool, rows: Sequence[Row], summary: Summary) -> None:
    """What an import would do, read without writing: replays, conflicts, new credits."""
    for start in range(0, len(rows), PREVIEW_CHUNK):
        chunk = rows[start:start + PREVIEW_CHUNK]
        found = await pool.fetch(
            "SELECT * FROM balance.balance_import_preview($1, $2, $3, $4, $5)",
            [r.account_id for r in chunk], KEY, [r.fingerprint for r in chunk], PLAN_KEY,
            [r.plan_fingerprint for r in chunk])
        for row, seen in zip(chunk, found, strict=True):
            plan_state = seen["plan_key"] if row.plan is not None else "same"
            if "other" in (seen["credit_key"], plan_state):
                summary.conflicts += 1
                _conflict(summary, row, seen["credit_key"] == "other")
            elif seen["credit_key"] == "same" and plan_state == "same":
                summary.already += 1
            else:
                summary.imported += 1
                if seen["credit_key"] is None:
                    summary.credits += row.balance
                    if seen["existed"] and row.balance:
                        summary.existing += 1


async def write(ledger: Ledger, plans: Plans, rows: Sequence[Row], summary: Summary,
                progress: Progress) -> None:
    """Post every row's credits, then assign the plans; each committed change leaves through
    the ledger's door like any other."""
    credited = await _each(rows, lambda r: ledger.post(
        r.account_id, kind="grant", amount=r.balance, reason=REASON, idempotency_key=KEY,
        fingerprint=r.fingerprint, expires_at=r.expires_at, priority=PRIORITY),
        progress, 0)
    conflicted = {r.account_id for r, outcome in zip(rows, credited, strict=True)
                  if outcome is None}
    with_plan = [r for r in rows if r.plan is not None and r.account_id not in conflicted]
    assigned = dict(zip((r.account_id for r in with_plan), await _each(
        with_plan, lambda r: plans.assign(r.account_id, r.plan, None, PLAN_KEY,
                                          r.plan_fingerprint),
        progress, len(rows)), strict=True))
    for row, credit in zip(rows, credited, strict=True):
        plan = assigned.get(row.account_id, Outcome(b"", True))
        if credit is None or plan is None:
            summary.conflicts += 1
            _conflict(summary, row, credit is None)
        elif credit.replayed and plan.replayed:
            summary.already += 1
        else:
            summary.imported += 1
            if not credit.replayed:
                summary.credits += row.balance


async def _each(rows: Sequence[Row], call: Callable[[Row], Any], progress: Progress,
                done: int) -> list[Outcome | None]:
    """`call` on every row, CHUNK at a time: each Outcome, or None for a conflict."""
    async def one(row: Row) -> Outcome | None:
        try:
            outcome: Outcome = await call(row)
        except errors.Problem as exc:
            if exc.code != "idempotency_conflict":
                raise
            return None
        return outcome

    results: list[Outcome | None] = []
    for start in range(0, len(rows), CHUNK):
        results += await asyncio.gather(*(one(r) for r in rows[start:start + CHUNK]))
        progress(done + len(results))
    return results


def _conflict(summary: Summary, row: Row, credit: bool) -> None:
    what = "balance or expires_at" if credit else "plan"
    summary.notes.append(f"line {row.line}: {row.account_id} was imported before with "
                         f"another {what}: not applied")


# ---------------------------------------------------------------- the terminal


class Bar:
    """A progress line on a terminal (`\\r`, at most ten redraws a second); silent elsewhere,
    where a log would only collect the redraws."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self._total = max(total, 1)
        self._stream = stream
        self._on = stream.isatty()
        self._started = self._drawn = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if not self._on or (now - self._drawn < 0.1 and done < self._total):
            return
        self._drawn = now
        width = 30
        filled = width * min(done, self._total) // self._total
        rate = done / max(now - self._started, 1e-9)
        self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self._total}"
                           f" ({rate:.0f}/s)")
        self._stream.flush()

    def close(self) -> None:
        if self._on:
            self._stream.write("\n")
            self._stream.flush()


def shown(lines: Iterable[str], total: int) -> list[str]:
    """The first SHOWN lines, and how many more there were."""
    out = list(lines)[:SHOWN]
    if total > SHOWN:
        out.append(f"... and {total - SHOWN} more")
    return out


async def main(database: Database, catalog: Catalog, path: Path, fmt: str | None,
               dry_run: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The command: 0 when every row is imported (or was already), 1 otherwise."""
    started = time.monotonic()
    fmt = file_format(path, fmt)
    rows, problems = read(path, fmt, catalog.plans.keys())
    summary = Summary(rows=len(rows) + len(problems), errors=len(problems))
    if problems:
        for line in shown(problems, len(problems)):
            print(line, file=err)
        print(f"{len(problems)} bad row(s): nothing was written. Fix them and run again "
              "(rows already imported are then replayed, not imported twice).", file=err)
    # Batches two at a time (group commit), the preview and a plan: a few connections.
    pool = await asyncpg.create_pool(min_size=1, max_size=4, **pool_options(database))
    assert pool is not None
    try:
        seen = Summary()
        await preview(pool, rows, seen)
        if dry_run or problems:
            summary.imported, summary.already = seen.imported, seen.already
            summary.conflicts, summary.credits = seen.conflicts, seen.credits
            summary.notes = seen.notes
        else:
            ledger = Ledger(pool, 0, max_inflight=2)  # imported accounts get no welcome
            plans = Plans(ledger, catalog)
            await plans.sync()
            bar = Bar(len(rows) + sum(r.plan is not None for r in rows), err)
            try:
                await write(ledger, plans, rows, summary, bar)
            except (errors.Problem, asyncpg.PostgresError, OSError) as exc:
                bar.close()
                print(f"import stopped: {exc}. What committed stays; run the same file "
                      "again: rows already imported are replayed, not imported twice.",
                      file=err)
                return 1
            bar.close()
    finally:
        await pool.close()
    summary.seconds = time.monotonic() - started
    for line in shown(summary.notes, len(summary.notes)):
        print(line, file=err)
    if seen.existing:
        print(f"{seen.existing} account(s) existed already: the imported balance "
              f"{'would be' if dry_run or problems else 'was'} added to theirs", file=err)
    print(summary.line(dry_run or bool(problems)), file=out)
    if dry_run and not problems:
        print("dry run: nothing was written", file=out)
    return 1 if problems or summary.conflicts else 0
