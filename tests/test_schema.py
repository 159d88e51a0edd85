"""`migrate`: each change once, a re-run that locks nothing, and the upgrade from 0.1.0."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from server.dev import servers as devservers
from server.schema import SCHEMA_PATH, MigrationError, migrate, sections
from tests.conftest import IN_SCHEMA

RELEASE_0_1_0 = Path(__file__).resolve().parent / "data" / "schema-0.1.0.sql"


@pytest.fixture
async def fresh_db(postgres: devservers.PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a new, empty database of the session's PostgreSQL."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(postgres.url.rsplit("/", 1)[0] + f"/{name}",
                                 server_settings=IN_SCHEMA)
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()


# schema.sql's definitions sections, in file order.
DEFINITIONS = ["json_shapes", "movements", "jobs", "plans", "subscriptions", "alerts", "top_ups",
               "spend_caps", "payments", "import", "retention", "history", "operator"]


def test_schema_sql_reads_as_steps_then_definitions_then_indexes() -> None:
    found = sections(SCHEMA_PATH.read_text())
    kinds = [s.kind for s in found]
    assert kinds == sorted(kinds, key=("step", "definitions", "index").index)
    assert [s.name for s in found if s.kind == "definitions"] == DEFINITIONS
    assert all("CONCURRENTLY" in s.sql for s in found if s.kind == "index")


async def test_history_by_kind_reads_an_index(fresh_db: asyncpg.Connection) -> None:
    await migrate(fresh_db)
    await fresh_db.execute("SET enable_seqscan = off")  # an empty table: ask for the plan
    plan = "\n".join(r[0] for r in await fresh_db.fetch(
        "EXPLAIN SELECT * FROM transactions WHERE account_id = 'a' AND kind = 'expiry'"
        " ORDER BY id DESC LIMIT 51"))
    assert "transactions_account_kind_idx" in plan, plan


async def test_a_rerun_applies_nothing_and_waits_for_no_lock(
    fresh_db: asyncpg.Connection, postgres: devservers.PostgresServer
) -> None:
    first = await migrate(fresh_db)
    assert first == [s.name for s in sections(SCHEMA_PATH.read_text())]
    # Another session is in the middle of a debit: it holds row locks on the ledger.
    name = await fresh_db.fetchval("SELECT current_database()")
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    busy = await asyncpg.connect(url, server_settings=IN_SCHEMA)
    try:
        tx = busy.transaction()
        await tx.start()
        await busy.execute(
            "SELECT balance_post('a', 0, 'k', '\\x00'::bytea, 'grant', 5, NULL, NULL, NULL,"
            " 'available')")
        await fresh_db.execute("SET lock_timeout = '1s'")
        assert await migrate(fresh_db) == []  # would time out if it took any table lock
        await tx.commit()
    finally:
        await busy.close()
    recorded = await fresh_db.fetch("SELECT name, kind FROM schema_migrations ORDER BY name")
    assert len(recorded) == len(first)


async def test_changed_definitions_rerun_and_a_changed_step_is_refused(
    fresh_db: asyncpg.Connection,
) -> None:
    text = SCHEMA_PATH.read_text()
    await migrate(fresh_db, text)
    commented = text.replace("-- definitions: jobs\n", "-- definitions: jobs\n-- (a note)\n")
    assert await migrate(fresh_db, commented) == []  # comments are not changes
    edited = text.replace(
        "-- definitions: jobs\n",
        "-- definitions: jobs\nCOMMENT ON TABLE holds IS 'reserved credits';\n")
    assert await migrate(fresh_db, edited) == ["jobs"]
    assert await migrate(fresh_db, edited) == []
    tampered = text.replace("-- step: 001_tables\n",
                            "-- step: 001_tables\nCREATE TABLE IF NOT EXISTS extra (n int);\n")
    with pytest.raises(MigrationError, match="001_tables"):
        await migrate(fresh_db, tampered)
    added = text.replace(
        "-- ================================================================ JSON shapes",
        "-- step: 003_note\nALTER TABLE accounts ADD COLUMN IF NOT EXISTS note text;\n\n"
        "-- ================================================================ JSON shapes")
    # A new step runs once, and the definitions after it are applied again.
    assert await migrate(fresh_db, added) == ["003_note", *DEFINITIONS]
    assert await fresh_db.fetchval(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'accounts' AND column_name = 'note'") == 1


async def test_upgrade_from_release_0_1_0_keeps_every_row(fresh_db: asyncpg.Connection) -> None:
    db = fresh_db
    await db.execute(RELEASE_0_1_0.read_text())
    # Beside it in `public`, the app's own objects, with names we use too.
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    await db.execute(f"""
        CREATE TABLE public.settings (key text PRIMARY KEY, value text);
        CREATE TABLE public.schema_migrations (version varchar PRIMARY KEY);
        CREATE FUNCTION public.balance_for_user(text) RETURNS int LANGUAGE sql AS 'SELECT 1';
        CREATE ROLE {reader};
        GRANT SELECT ON public.accounts TO {reader};""")
    later = datetime.now(UTC) + timedelta(days=30)
    # Written by 0.1.0's own functions: credits (one lot expiring), a debit, a hold, a
    # purchase and a partial refund of it.
    post = ("SELECT (balance_post($1, 0, $2, '\\x01'::bytea, $3, $4, 'r', NULL, $5,"
            " 'available')).status")
    assert await db.fetchval(post, "old", "c1", "grant", 100, None) == 200
    assert await db.fetchval(post, "old", "c2", "grant", 40, later) == 200
    assert await db.fetchval(post, "old", "d1", "usage", -30, None) == 200
    hold = await db.fetchrow(
        "SELECT (r).status, (r).hold_id FROM (SELECT balance_hold('old', 0, 'h1',"
        " '\\x02'::bytea, 20, 3600, 'job', NULL) r) s")
    assert hold is not None and hold["status"] == 201
    assert await db.fetchval(
        "SELECT (balance_purchase('stripe', 'pi_1', 'old', 50, 1000, 'usd', 'evt_1', NULL, 0,"
        " 'debt')).status") == 200
    assert await db.fetchval(
        "SELECT (balance_refund('stripe', 'pi_1', 'ch_1@200', 200, 1000, true, false, 'evt_2',"
        " 0, 'debt')).status") == 200
    before = await db.fetchrow("SELECT * FROM accounts WHERE account_id = 'old'")
    assert before is not None
    assert (before["balance"], before["held"]) == (100 + 40 - 30 + 50 - 10, 20)
    counts = ("SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM holds),"
              " (SELECT count(*) FROM credit_lots), (SELECT count(*) FROM payments),"
              " (SELECT count(*) FROM payment_refunds), (SELECT count(*) FROM idempotency_keys)")
    rows_before = tuple(await db.fetchrow(counts) or ())

    ran = await migrate(db)
    assert ran == [s.name for s in sections(SCHEMA_PATH.read_text())]
    assert await migrate(db) == []
    # 0.1.0 lived in `public`: everything of it moved to the schema of our own, rows kept;
    # the app's own objects stayed, and who could read our tables still can.
    try:
        assert await db.fetchval("SELECT to_regclass('public.accounts')") is None
        assert await db.fetchval(
            "SELECT array_agg(proname::text) FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace") == ["balance_for_user"]
        assert await db.fetchval(
            "SELECT array_agg(relname::text ORDER BY relname) FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'") == [
            "schema_migrations", "settings"]
        assert await db.fetchval("SELECT count(*) FROM public.schema_migrations") == 0
        assert await db.fetchval("SELECT count(*) FROM balance.transactions") == rows_before[0]
        assert await db.fetchval("SELECT has_schema_privilege($1, 'balance', 'USAGE')"
                                 " AND has_table_privilege($1, 'balance.accounts', 'SELECT')",
                                 reader)
    finally:
        await db.execute(f"REVOKE ALL ON balance.accounts FROM {reader};"
                         f" REVOKE ALL ON SCHEMA balance FROM {reader}; DROP ROLE {reader}")
    # ...and each function finds the tables from a session whose search_path has no `balance`.
    await db.execute("SET search_path = public")
    assert await db.fetch("SELECT * FROM balance.balance_reconcile()") == []
    await db.execute("RESET search_path")

    after = await db.fetchrow("SELECT * FROM accounts WHERE account_id = 'old'")
    # expired_held added; expiring gone (every credit is in a grant now); no plan.
    expected = {k: v for k, v in dict(before).items() if k != "expiring"}
    assert dict(after or {}) == {**expected, "expired_held": 0, "unsettled": 0, "plan": None,
                                 "plan_anchor": None, "period_index": None,
                                 "period_start": None, "period_end": None,
                                 "low_balance": None, "alert_state": "ok",
                                 "top_up_below": None, "alert_told": False,
                                 "alert_from": None, "subscription": None, "spend_cap": None,
                                 "spend_period": None, "spend_window": None, "spend_used": 0,
                                 "alert_floor": None}
    lots_before = rows_before[2]
    assert tuple(await db.fetchrow(counts) or ()) == (
        *rows_before[:2], lots_before + 1, *rows_before[3:])  # one grant for the rest
    grants = await db.fetch("SELECT kind, remaining, priority, expires_at IS NULL AS forever"
                            " FROM credit_lots WHERE account_id = 'old' ORDER BY id")
    # The 0.1.0 lot (40: the debit took 30, the reversal 10) is spent; the 150 the account
    # owns become one grant, spent last.
    assert [tuple(g) for g in grants] == [("grant", 0, 20, False), ("purchase", 150, 50, True)]
    assert await db.fetch("SELECT * FROM balance_reconcile()") == []
    assert await db.fetchval("SELECT count(*) FROM pg_trigger"
                             " WHERE tgname = 'transactions_append_only'") == 1
    # The new functions work on the old rows: a key used before replays its stored answer,
    # the old hold is captured, and debits go on.
    new_post = ("SELECT (r).result, (r).replayed, (r).body FROM (SELECT balance_post('old', 0,"
                " $1, '\\x01'::bytea, $2, $3, 'r', NULL, NULL, 'available') r) s")
    replay = await db.fetchrow(new_post, "d1", "usage", -30)
    assert replay is not None and (replay["result"], replay["replayed"]) == ("ok", True)
    assert '"balance_after": 110' in replay["body"]
    captured = await db.fetchval(
        "SELECT (balance_resolve_hold($1, 'capture', 15, NULL)).result", hold["hold_id"])
    assert captured == "ok"
    debit = await db.fetchrow(new_post, "d2", "usage", -5)
    assert debit is not None and debit["result"] == "ok" and not debit["replayed"]
    assert await db.fetchval(
        "SELECT balance FROM accounts WHERE account_id = 'old'") == 150 - 15 - 5
    assert await db.fetch("SELECT * FROM balance_reconcile()") == []


async def test_upgrade_trims_a_lot_that_a_debt_had_absorbed(fresh_db: asyncpg.Connection) -> None:
    """0.1.0 opened a lot for a whole credit even when a debt absorbed part of it: after the
    upgrade, the lot's expiry takes nothing the account no longer has."""
    db = fresh_db
    await db.execute(RELEASE_0_1_0.read_text())
    post = ("SELECT (balance_post('debtor', 0, $1, '\\x01'::bytea, $2, $3, 'r', NULL, $4,"
            " $5)).status")
    assert await db.fetchval(post, "rev", "reversal", -100, None, "debt") == 200
    soon = datetime.now(UTC) + timedelta(seconds=1)
    assert await db.fetchval(post, "promo", "grant", 50, soon, "available") == 200
    assert await db.fetchval(
        "SELECT sum(remaining) FROM credit_lots WHERE account_id = 'debtor'") == 50
    await migrate(db)
    assert await db.fetch("SELECT * FROM balance_reconcile()") == []
    assert await db.fetchval("SELECT unsettled FROM accounts WHERE account_id = 'debtor'") == 50
    await asyncio.sleep(1.1)
    await db.fetch("SELECT * FROM balance_sweep(100)")
    assert await db.fetchval("SELECT balance FROM accounts WHERE account_id = 'debtor'") == -50
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE account_id = 'debtor'"
                             " AND kind = 'expiry'") == 0
    assert await db.fetch("SELECT * FROM balance_reconcile()") == []


async def test_stripe_amounts_kept_in_stripes_units_become_iso_minor_units(
    fresh_db: asyncpg.Connection,
) -> None:
    """Step 012: rows written before the server converted Stripe's units hold Stripe's
    numbers (ISK and UGX in hundredths, MGA in whole ariary); after it, ISO 4217's."""
    text = SCHEMA_PATH.read_text()
    await migrate(fresh_db, text[: text.index("-- step: 012_iso_minor_units")])
    await fresh_db.execute("INSERT INTO accounts (account_id) VALUES ('u')")
    await fresh_db.execute("""
        INSERT INTO payments (provider, payment_id, account_id, credits, amount_paid, currency)
        VALUES ('stripe', 'pi_isk', 'u', 1, 15000000, 'isk'),
               ('stripe', 'pi_mga', 'u', 1, 100000, 'MGA'),
               ('stripe', 'pi_usd', 'u', 1, 500, 'usd'),
               ('dodo', 'pay_isk', 'u', 1, 150000, 'isk')""")
    await fresh_db.execute("""
        INSERT INTO payment_refunds (provider, refund_key, payment_id, refunded, paid,
                                     cumulative, full_refund)
        VALUES ('stripe', 'ch_isk@7500050', 'pi_isk', 7500050, 15000000, true, false),
               ('stripe', 'ch_mga@50000', 'pi_mga', 50000, 100000, true, false)""")
    await fresh_db.execute("""
        INSERT INTO payment_disputes (provider, dispute_id, payment_id, amount, status)
        VALUES ('stripe', 'dp_isk', 'pi_isk', 100, 'open')""")
    await migrate(fresh_db)
    paid = {r["payment_id"]: r["amount_paid"] for r in await fresh_db.fetch(
        "SELECT payment_id, amount_paid FROM payments")}
    assert paid == {"pi_isk": 150000, "pi_mga": 10000000, "pi_usd": 500, "pay_isk": 150000}
    refunds = {r["payment_id"]: (r["refunded"], r["paid"]) for r in await fresh_db.fetch(
        "SELECT payment_id, refunded, paid FROM payment_refunds")}
    assert refunds == {"pi_isk": (75001, 150000), "pi_mga": (5000000, 10000000)}
    assert await fresh_db.fetchval("SELECT amount FROM payment_disputes") == 1


async def test_an_apps_own_tables_in_public_are_left_alone(fresh_db: asyncpg.Connection) -> None:
    """Pointed at the app's own database, migrate creates everything in `balance` and
    neither adopts nor trips over the app's `accounts` (another shape) or `events`."""
    await fresh_db.execute("""
        CREATE TABLE public.accounts (id serial PRIMARY KEY, email text NOT NULL);
        CREATE TABLE public.events (id serial PRIMARY KEY, name text);
        INSERT INTO public.accounts (email) VALUES ('a@example.com');""")
    await migrate(fresh_db)
    assert await fresh_db.fetchval("SELECT string_agg(email, ',') FROM public.accounts") == (
        "a@example.com")
    columns = {r[0] for r in await fresh_db.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'accounts'")}
    assert columns == {"id", "email"}
    assert await fresh_db.fetchval(
        "SELECT (balance.balance_post('a', 0, 'k', '\\x00'::bytea, 'grant', 5, NULL, NULL,"
        " NULL, 'available')).result") == "ok"
    assert await fresh_db.fetchval(
        "SELECT balance FROM balance.accounts WHERE account_id = 'a'") == 5


async def test_another_schema_name(fresh_db: asyncpg.Connection) -> None:
    await migrate(fresh_db, schema="credits")
    assert await fresh_db.fetchval("SELECT to_regclass('balance.accounts')") is None
    await fresh_db.execute("SET search_path = public")
    assert await fresh_db.fetchval(
        "SELECT (credits.balance_post('a', 0, 'k', '\\x00'::bytea, 'grant', 5, NULL, NULL,"
        " NULL, 'available')).result") == "ok"
    assert await fresh_db.fetch("SELECT * FROM credits.balance_reconcile()") == []
    assert await migrate(fresh_db, schema="credits") == []


async def test_a_schema_that_holds_the_apps_tables_is_refused(
    fresh_db: asyncpg.Connection
) -> None:
    await fresh_db.execute("CREATE SCHEMA balance; CREATE TABLE balance.things (id int)")
    with pytest.raises(MigrationError, match="not balance-server's"):
        await migrate(fresh_db)
    assert await fresh_db.fetchval("SELECT to_regclass('balance.accounts')") is None


async def test_another_schema_leaves_an_install_in_public_alone(
    fresh_db: asyncpg.Connection
) -> None:
    """A staging deployment naming its own schema on the database where 0.1.0 still serves
    from `public` starts afresh; it does not take production's ledger."""
    await fresh_db.execute(RELEASE_0_1_0.read_text())
    await migrate(fresh_db, schema="staging")
    assert await fresh_db.fetchval("SELECT to_regclass('public.accounts')") is not None
    assert await fresh_db.fetchval("SELECT count(*) FROM staging.accounts") == 0
