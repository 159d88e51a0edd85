"""balance-server serve | migrate | dev | reconcile | import FILE | token ACCOUNT."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from server import __version__
from server.catalog import CatalogError
from server.config import ConfigError, Database, Settings
from server.limiter import LimitsError

log = logging.getLogger("balance.cli")

# The demo shop (client_js/demo): what its buttons charge, the packs "Buy credits" sells,
# and a credit a cent for any other amount.
DEV_CATALOG = {
    "prices": {"generate_image": 5, "upscale": 2, "remove_background": 3, "generate_video": 40},
    "packages": {"starter": {"credits": 100, "price": {"usd": 500}},
                 "popular": {"credits": 500, "price": {"usd": 2000}},
                 "best_value": {"credits": 2000, "price": {"usd": 6000}}},
    "pay_as_you_go": {"credits_per_unit": {"usd": 100}, "min_amount": {"usd": 100}},
    "plans": {"free": {"allowance": 50},
              "pro": {"allowance": 300, "rollover": 100, "prices": {"generate_image": 4},
                      "limits": {"generate_video": 5}}},
    "alerts": {"low_balance": 20},
}


def _serve(settings: Settings, *, dev: bool = False) -> None:
    from server import logs, serve
    from server.app import create_app

    logs.setup(settings)

    extra = None
    if dev:
        from server.dev import routes

        extra = routes.routes()
    app = create_app(settings, extra_routes=extra)
    serve.server(app, settings, log_level=settings.log_level).run()


async def _migrate(database: Database) -> list[str]:
    from server.db import behind_pooler, dsn
    from server.schema import migrate

    # Its index builds (CREATE INDEX CONCURRENTLY, under a session lock) need a session. By
    # the URL alone: BALANCE_DB_POOLER describes serve's URL, which the release step's
    # environment carries beside the direct one it gives migrate.
    if behind_pooler(replace(database, pooler="auto")):
        raise ConfigError("migrate needs a session of its own: give it the direct (or "
                          "session-mode) URL, not the transaction pooler's")
    conn = await asyncpg.connect(dsn(database))
    try:
        return await migrate(conn, schema=database.schema)
    finally:
        await conn.close()


async def _reconcile(database: Database) -> int:
    from server.db import pool_options
    from server.ledger import Ledger

    pool = await asyncpg.create_pool(min_size=1, max_size=2, **pool_options(database))
    assert pool is not None
    try:
        rows = await Ledger(pool, 0).reconcile()
        checked = await pool.fetchval("SELECT count(*) FROM balance.accounts")
    finally:
        await pool.close()
    for r in rows:
        print(
            f"MISMATCH {r['account_id']}: balance={r['balance']} ledger_sum={r['ledger_sum']} "
            f"held={r['held']} active_holds={r['holds_sum']} "
            f"expired_held={r['expired_held']} open_grants={r['grants_sum']}"
        )
    print(f"reconcile: {checked} accounts checked, {len(rows)} mismatched")
    return 1 if rows else 0


def _import(args: argparse.Namespace) -> int:
    """With the server's database and catalog (its plans); the alert threshold and webhook
    types the movements need are the database's own (the `settings` row the server wrote)."""
    from server import importer
    from server.catalog import load as load_catalog

    catalog = load_catalog(os.environ.get("BALANCE_CATALOG_FILE") or None,
                           os.environ.get("BALANCE_PRICES_FILE") or None)
    try:
        return asyncio.run(importer.main(Database.from_env(), catalog, args.file, args.format,
                                         args.dry_run))
    except importer.FileError as exc:
        print(f"balance-server import: {exc}", file=sys.stderr)
        return 2


LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PASSWORD_PARAM = re.compile(r"((?:^|&)(?:password|passwd|pass|pwd)=)[^&]*", re.IGNORECASE)


def masked(url: str) -> str:
    """The URL with any password in it (user info, or a password= query parameter) shown as
    ***, fit to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that does not parse)"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    netloc = f"{userinfo}{at}{hosts}"
    query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def _dev(args: argparse.Namespace) -> int:
    """Throwaway PostgreSQL + Redis (unless DATABASE_URL / REDIS_URL are given), then serve.

    Its routes mint tokens for anyone, spend from any account and pay on a stand-in: so it
    listens on loopback only, and refuses a database or Redis it did not start (its writes,
    its balance frames on that Redis's channels), unless --i-know. No password in a URL it
    prints is shown.
    """
    from server.dev import servers

    host = args.host or "127.0.0.1"
    if host not in LOOPBACK and not args.i_know:
        raise ConfigError(f"dev listens on loopback only (not {host!r}): its routes spend from "
                          "any account without a key. Use `serve`, or add --i-know")
    if os.environ.get("DATABASE_URL") and not args.i_know:
        raise ConfigError("dev starts its own throwaway PostgreSQL; DATABASE_URL is set, and "
                          "dev's routes would write to that database. Unset it, or add --i-know")
    env = dict(os.environ)
    if args.no_redis:
        env.pop("REDIS_URL", None)  # in-memory fan-out only, whatever the environment says
    if env.get("REDIS_URL") and not args.i_know:
        raise ConfigError("dev starts its own throwaway Redis; REDIS_URL is set, and dev would "
                          "publish its balances on that Redis's channels. Unset it (or add "
                          "--no-redis), or add --i-know")
    started: list[servers.PostgresServer | servers.RedisServer] = []
    try:
        if not env.get("DATABASE_URL"):
            print("starting a throwaway PostgreSQL ...", flush=True)
            pg = servers.start_postgres()
            started.append(pg)
            env["DATABASE_URL"] = pg.url
        if not env.get("REDIS_URL") and not args.no_redis:
            print("starting a throwaway Redis ...", flush=True)
            redis = servers.start_redis()
            started.append(redis)
            env["REDIS_URL"] = redis.url
        asyncio.run(_migrate(Database.from_env(env)))
        env.setdefault("BALANCE_SERVICE_KEYS", "sk_dev_" + secrets.token_urlsafe(24))
        env.setdefault("BALANCE_TOKEN_SECRET", secrets.token_urlsafe(48))
        env.setdefault("BALANCE_WELCOME_CREDITS", "100")
        env.setdefault("BALANCE_STRIPE_WEBHOOK_SECRET", "whsec_dev_" + secrets.token_hex(16))
        if not env.get("BALANCE_CATALOG_FILE") and not env.get("BALANCE_PRICES_FILE"):
            catalog = Path(tempfile.mkdtemp(prefix="balance-dev-")) / "catalog.json"
            catalog.write_text(json.dumps(DEV_CATALOG))
            env["BALANCE_CATALOG_FILE"] = str(catalog)
        env["HOST"] = host
        env["PORT"] = str(args.port or env.get("PORT", "8000"))
        # Checkout against the Stripe stand-in this server mounts (server/dev/standin.py).
        base = f"http://{env['HOST']}:{env['PORT']}"
        if not env.get("BALANCE_STRIPE_API_KEY"):
            env["BALANCE_STRIPE_API_KEY"] = "sk_dev_standin"
            env["BALANCE_STRIPE_API_BASE"] = f"{base}/dev/stripe"
        env.setdefault("BALANCE_CHECKOUT_RETURN_URLS", f"{base}/")
        # App webhooks go to dev's own inbox page (server/dev/inbox.py), signed as for real.
        if not env.get("BALANCE_APP_WEBHOOK_URL"):
            env["BALANCE_APP_WEBHOOK_URL"] = f"{base}/dev/webhooks"
            env["BALANCE_APP_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(
                secrets.token_bytes(24)).decode()
        settings = Settings.from_env(env)
        key = settings.service_keys[0].secret
        # The console's sign-in: the first admin key, else whatever key there is.
        operator = next((k for k in settings.service_keys if k.scope == "admin"),
                        settings.service_keys[0])
        from server.auth import mint_token

        token, _ = mint_token(settings.token_secret, "demo-user", 3600)
        base = f"http://{settings.host}:{settings.port}"
        redis_none = "(none: in-memory fan-out)"
        print(
            "\nbalance-server dev is up (throwaway data, gone on Ctrl-C)\n"
            f"  demo page     {base}/?account=demo-user\n"
            f"  app webhooks  {masked(settings.app_webhook_url or '')}   "
            "(what your backend would receive)\n"
            f"  console       {base}/console   (operator key: {operator.secret})\n"
            f"  API           {base}/v1   (OpenAPI: {base}/openapi.json)\n"
            f"  WebSocket     ws://{settings.host}:{settings.port}/v1/ws\n"
            f"  DATABASE_URL  {masked(env['DATABASE_URL'])}\n"
            f"  REDIS_URL     {masked(env['REDIS_URL']) if env.get('REDIS_URL') else redis_none}\n"
            f"  service key   {key}\n"
            f"  user token    {token}   (account demo-user, 1 h)\n"
            f"  stripe secret {settings.stripe_webhook_secret}\n\n"
            f"  try: curl -s -X POST {base}/v1/accounts/alice/debit "
            f"-H 'Authorization: Bearer {key}' "
            "-d '{\"amount\": 5, \"reason\": \"demo\", \"idempotency_key\": \"k1\"}'\n",
            flush=True,
        )
        # uvicorn re-raises the signal that stopped it once it is done; SIGTERM's default
        # action would end the process before the throwaway servers below are stopped.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        _serve(settings, dev=True)
        return 0
    finally:
        for throwaway in reversed(started):
            throwaway.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balance-server", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (configured by the environment)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    sub.add_parser("migrate", help="apply schema.sql to DATABASE_URL (idempotent)")
    dev = sub.add_parser("dev", help="zero-setup: throwaway PostgreSQL + Redis, demo page")
    dev.add_argument("--host")
    dev.add_argument("--port", type=int)
    dev.add_argument("--no-redis", action="store_true", help="in-memory fan-out only")
    dev.add_argument("--i-know", action="store_true",
                     help="allow a non-loopback --host, or a DATABASE_URL or REDIS_URL that dev "
                     "did not start")
    sub.add_parser("reconcile", help="check balance == sum(ledger) and held == active holds")
    imp = sub.add_parser("import", help="move an existing credits table in (CSV or JSON lines: "
                         "account_id, balance, plan?, expires_at?)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", choices=("csv", "jsonl"),
                     help="default: by extension (.csv, .jsonl, .ndjson)")
    imp.add_argument("--dry-run", action="store_true",
                     help="check the file and say what would happen; write nothing")
    token = sub.add_parser("token", help="print a user token for ACCOUNT")
    token.add_argument("account")
    token.add_argument("--ttl", type=int, default=3600)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    try:
        if args.command == "dev":
            return _dev(args)
        if args.command == "token":
            secret = os.environ.get("BALANCE_TOKEN_SECRET", "")
            if len(secret) < 32:
                raise ConfigError("BALANCE_TOKEN_SECRET is required, at least 32 characters")
            from server.auth import mint_token

            print(mint_token(secret, args.account, args.ttl)[0])
            return 0
        database = Database.from_env()
        if args.command == "migrate":
            ran = asyncio.run(_migrate(database))
            print(f"schema applied: {', '.join(ran) or 'nothing new'}")
            return 0
        if args.command == "reconcile":
            return asyncio.run(_reconcile(database))
        if args.command == "import":
            return _import(args)
        overrides: dict[str, object] = {}
        if args.host:
            overrides["host"] = args.host
        if args.port:
            overrides["port"] = args.port
        _serve(Settings.from_env(None, **overrides))
        return 0
    except (ConfigError, CatalogError, LimitsError) as exc:
        print(f"balance-server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
