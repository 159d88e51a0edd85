"""`migrate`: bring a database up to schema.sql, each change once, recorded in a table.

schema.sql is read as sections (its header says how): a `step` runs once ever and is
recorded with its checksum; `definitions` (CREATE OR REPLACE functions and views) run again
only when their text changed or a step ran before them; an `index` is built once, with
CREATE INDEX CONCURRENTLY after the rest commits. So a re-run with nothing new only reads
`schema_migrations`: no table of money is locked or rewritten by a deploy.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import asyncpg

from server import shipped

SCHEMA_PATH = shipped.path("schema.sql")
# pg_advisory_xact_lock key: two instances running `migrate` at once take turns.
_MIGRATE_LOCK = 0x62616C616E6365
_MARKER = re.compile(r"^-- (step|definitions|index): (\S+)\s*$", re.MULTILINE)


class MigrationError(Exception):
    """schema.sql and the database's record of it disagree; the message says how."""


@dataclass(frozen=True, slots=True)
class Section:
    kind: str  # "step", "definitions" or "index"
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Of the statements only: a comment or blank line edited is no change to apply."""
        statements = [line.rstrip() for line in self.sql.splitlines()
                      if line.strip() and not line.lstrip().startswith("--")]
        return hashlib.sha256("\n".join(statements).encode()).hexdigest()


def sections(text: str) -> list[Section]:
    """The sections of schema.sql in file order; every step comes before any definitions."""
    marks = list(_MARKER.finditer(text))
    if not marks:
        raise MigrationError("schema.sql has no '-- step:' or '-- definitions:' sections")
    found: list[Section] = []
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else len(text)
        found.append(Section(mark.group(1), mark.group(2), text[mark.end() : end].strip()))
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise MigrationError("schema.sql names a section twice")
    kinds = [s.kind for s in found]
    if kinds != sorted(kinds, key=("step", "definitions", "index").index):
        raise MigrationError("schema.sql: steps, then definitions, then indexes")
    return found


async def migrate(conn: asyncpg.Connection, schema: str | None = None) -> list[str]:
    """Apply what schema.sql has that the database lacks; the names of the sections run."""
    text = SCHEMA_PATH.read_text() if schema is None else schema
    plan = sections(text)
    ran: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name        text PRIMARY KEY,
                kind        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {
            r["name"]: r["checksum"]
            for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
        }
        step_ran = False
        for section in plan:
            recorded = applied.get(section.name)
            if section.kind == "index":
                continue  # after the commit, below
            if section.kind == "step":
                if recorded is not None:
                    if recorded != section.checksum:
                        raise MigrationError(
                            f"step {section.name} was changed after it was applied; "
                            "leave it as it shipped and add a new step"
                        )
                    continue
                step_ran = True
            elif recorded == section.checksum and not step_ran:
                continue
            await conn.execute(section.sql)
            await conn.execute(
                """
                INSERT INTO schema_migrations (name, kind, checksum) VALUES ($1, $2, $3)
                ON CONFLICT (name) DO UPDATE SET checksum = $3, applied_at = now()
                """,
                section.name, section.kind, section.checksum,
            )
            ran.append(section.name)
    for section in plan:
        if section.kind == "index" and section.name not in applied:
            await _build_index(conn, section)
            ran.append(section.name)
    return ran


async def _build_index(conn: asyncpg.Connection, section: Section) -> None:
    """CREATE INDEX CONCURRENTLY, outside any transaction: a big ledger takes its writes
    while the index builds. The section is named after its index; one a failed build left
    invalid is dropped and built again."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
    try:
        if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE name = $1", section.name):
            return  # another migrator built it meanwhile
        valid = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = $1", section.name)
        if valid is False:
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{section.name}"')
        await conn.execute(section.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (name, kind, checksum) VALUES ($1, 'index', $2)",
            section.name, section.checksum)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK)
