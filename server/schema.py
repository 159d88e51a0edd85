"""`migrate`: bring a database up to schema.sql, each change once, recorded in a table.

schema.sql is read as sections (its header says how): a `step` runs once ever and is
recorded with its checksum; `definitions` (CREATE OR REPLACE functions and views) run again
only when their text changed or a step ran before them; an `index` is built once, with
CREATE INDEX CONCURRENTLY after the rest commits. So a re-run with nothing new only reads
`schema_migrations`: no table of money is locked or rewritten by a deploy.

Everything lives in one PostgreSQL schema of its own (`balance` unless configured), so the
server can share the app's database: schema.sql names nothing by schema, it runs with that
schema first on the search_path, and every function is pinned to it (a pooler hands each
transaction to any server session, so no session setting can be relied on). An install of
0.1.x, made in `public`, is moved there once (`_adopt_public`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import asyncpg

from server import shipped
from server.config import SCHEMA_NAME

SCHEMA_PATH = shipped.path("schema.sql")
# pg_advisory_xact_lock key: two instances running `migrate` at once take turns.
_MIGRATE_LOCK = 0x62616C616E6365
_MARKER = re.compile(r"^-- (step|definitions|index): (\S+)\s*$", re.MULTILINE)
# What schema.sql creates, by kind; our functions all start with `balance_`.
_CREATED = re.compile(r"^CREATE (?:OR REPLACE )?(TABLE|TYPE|VIEW)(?: IF NOT EXISTS)? (\w+)",
                      re.MULTILINE)


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


def _quoted(schema: str) -> str:
    if not SCHEMA_NAME.fullmatch(schema):
        raise MigrationError(f"schema name {schema!r}: lower-case letters, digits and _")
    return f'"{schema}"'


async def migrate(conn: asyncpg.Connection, text: str | None = None, *,
                  schema: str = "balance") -> list[str]:
    """Apply what schema.sql (or `text`) has that the database lacks, in `schema`; the
    names of the sections run."""
    text = SCHEMA_PATH.read_text() if text is None else text
    plan = sections(text)
    ident = _quoted(schema)
    ran: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
        if await conn.fetchval(
                "SELECT to_regclass($1 || '.schema_migrations') IS NULL AND EXISTS"
                " (SELECT 1 FROM pg_class WHERE relnamespace = $1::regnamespace)", ident):
            raise MigrationError(f"schema {schema} holds tables that are not balance-server's:"
                                 " set BALANCE_DB_SCHEMA to a schema of its own")
        # Ours first, where CREATE puts things; pg_catalog, not named, is searched before it
        # (nothing can shadow a built-in) and pg_temp, named, last (a temporary table of the
        # session can never stand in for ours).
        await conn.execute(f"SET LOCAL search_path = {ident}, pg_temp")
        moved = await _adopt_public(conn, text, schema)
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
            elif recorded == section.checksum and not step_ran and not moved:
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
        await _pin_functions(conn, schema)
    for section in plan:
        if section.kind == "index" and section.name not in applied:
            await _build_index(conn, section, ident)
            ran.append(section.name)
    return ran


# What release 0.1.0 created in `public` (it kept no schema_migrations): only these move.
_RELEASE_0_1_0 = {
    "TABLE": {"accounts", "transactions", "idempotency_keys", "holds", "credit_lots",
              "payments", "payment_refunds", "webhook_events_unfulfilled"},
    "TYPE": {"balance_result"},
    "VIEW": {"pending_refunds"},
}
_FUNCTION = re.compile(r"\b(?:FUNCTION|FUNCTION IF EXISTS) (balance_\w+)\s*\(")
_RELEASE_0_1_0_FUNCTIONS = {
    "balance__account_json", "balance__apply_refunds", "balance__claim_key",
    "balance__consume_lots", "balance__ensure", "balance__forbid_change", "balance__hold_json",
    "balance__payment_lock", "balance__ts", "balance__tx_json", "balance_account",
    "balance_hold", "balance_post", "balance_post_many", "balance_purchase",
    "balance_reconcile", "balance_record_unfulfilled", "balance_refund",
    "balance_resolve_hold", "balance_sweep",
}


async def _adopt_public(conn: asyncpg.Connection, text: str, schema: str) -> bool:
    """Move an install of an earlier release from `public` into `schema`, once; whether it
    did.

    Only into the default schema (a deployment naming another schema is a new install,
    and must not take one that still serves from `public`), only when that schema has no
    install yet, and only what is certainly ours: `public` must hold our ledger (accounts,
    transactions and the function balance_post beside them); then the relations the steps
    recorded in its schema_migrations created (0.1.0, which recorded none: its own list),
    and the functions schema.sql or 0.1.0 ever named. An app's own `settings`, `events` or
    `schema_migrations` (Rails, Ecto and dbmate use that name) stays. Tables move with
    their indexes, constraints, triggers, grants and identity sequences; ALTER ... SET
    SCHEMA rewrites no row. The roles granted our tables get USAGE on the schema.
    """
    if schema != "balance" or await conn.fetchval(
            "SELECT to_regclass(quote_ident($1) || '.accounts') IS NOT NULL", schema):
        return False
    ours = await conn.fetchval("""
        SELECT to_regclass('public.accounts') IS NOT NULL
           AND to_regclass('public.transactions') IS NOT NULL
           AND EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'balance_post'
                       AND pronamespace = 'public'::regnamespace)""")
    if not ours:
        return False
    ident = _quoted(schema)
    recorded = None
    if await conn.fetchval("""
            SELECT array_agg(attname::text ORDER BY attname) @> '{checksum,kind,name}'
            FROM pg_attribute WHERE attrelid = to_regclass('public.schema_migrations')
              AND attnum > 0 AND NOT attisdropped"""):
        recorded = {r[0] for r in await conn.fetch("SELECT name FROM public.schema_migrations")}
    if recorded is None or "001_tables" not in recorded:
        named = {kind: set(names) for kind, names in _RELEASE_0_1_0.items()}
    else:
        named = {"TABLE": {"schema_migrations"}, "TYPE": set(), "VIEW": set()}
        for section in sections(text):
            if section.name in recorded:
                for kind, name in _CREATED.findall(section.sql):
                    named[kind].add(name)
    functions = set(_FUNCTION.findall(text)) | _RELEASE_0_1_0_FUNCTIONS
    grantees: set[str] = set()
    for kind, relkinds in (("VIEW", ["v"]), ("TABLE", ["r", "p"])):
        for row in await conn.fetch(
                "SELECT relname, (SELECT array_agg(DISTINCT a.grantee::regrole::text)"
                "  FROM aclexplode(relacl) a WHERE a.grantee <> 0 AND a.grantee <> relowner)"
                " FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND relkind = ANY($1::char[]) AND relname = ANY($2::text[])",
                relkinds, sorted(named[kind])):
            grantees.update(row[1] or ())
            await conn.execute(f'ALTER {kind} public."{row[0]}" SET SCHEMA {ident}')
    for name in await conn.fetch(
            "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace"
            " AND typtype IN ('c', 'e', 'd') AND typname = ANY($1::text[])",
            sorted(named["TYPE"])):
        await conn.execute(f'ALTER TYPE public."{name[0]}" SET SCHEMA {ident}')
    for signature in await conn.fetch(
            _SIGNATURES + " AND p.proname = ANY($2::text[]) AND NOT EXISTS (SELECT 1"
            " FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')",
            "public", sorted(functions)):
        await conn.execute(f"ALTER FUNCTION {signature[0]} SET SCHEMA {ident}")
    for role in sorted(grantees):
        await conn.execute(f"GRANT USAGE ON SCHEMA {ident} TO {role}")
    return True


# Each function of a schema as ALTER FUNCTION names it, whatever the search_path.
_SIGNATURES = ("SELECT format('%I.%I(%s)', n.nspname, p.proname,"
               " pg_get_function_identity_arguments(p.oid))"
               " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
               " WHERE n.nspname = $1 AND p.prokind = 'f'")


async def _pin_functions(conn: asyncpg.Connection, schema: str) -> None:
    """Give each entry function its search_path: called from any session (a pooler's, an
    app's), its body finds our tables, and only ours. The helpers (`balance__*`) and the
    triggers run inside them and inherit it: pinning those too cost a fifth of a debit in
    PostgreSQL (each call saves and restores the setting). Except a deferred trigger: it
    runs at commit, after the entry function returned. A statement run by hand on our
    tables fires our triggers with its own search_path, so it names our schema first.
    Only functions not pinned yet: a re-run with nothing new alters nothing."""
    for signature in await conn.fetch(
            _SIGNATURES + " AND (p.proname NOT LIKE 'balance\\_\\_%' OR EXISTS (SELECT 1"
            " FROM pg_trigger t WHERE t.tgfoid = p.oid AND t.tginitdeferred)) AND NOT EXISTS"
            " (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')", schema):
        await conn.execute(
            f"ALTER FUNCTION {signature[0]} SET search_path = {_quoted(schema)}, pg_temp")


async def _build_index(conn: asyncpg.Connection, section: Section, ident: str) -> None:
    """CREATE INDEX CONCURRENTLY, outside any transaction: a big ledger takes its writes
    while the index builds. The section is named after its index; one a failed build left
    invalid is dropped and built again."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
    # A session setting, for the one statement that cannot run in a transaction (`migrate`
    # needs a session of its own: a direct or session-mode URL, never a transaction pooler);
    # the caller's is given back.
    caller_path = await conn.fetchval("SELECT current_setting('search_path')")
    await conn.execute(f"SET search_path = {ident}, pg_temp")
    try:
        if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE name = $1", section.name):
            return  # another migrator built it meanwhile
        valid = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = $1 AND c.relnamespace = $2::regnamespace", section.name,
            ident)
        if valid is False:
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{section.name}"')
        await conn.execute(section.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (name, kind, checksum) VALUES ($1, 'index', $2)",
            section.name, section.checksum)
    finally:
        await conn.execute("SELECT set_config('search_path', $1, false)", caller_path)
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK)
