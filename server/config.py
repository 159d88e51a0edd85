"""Settings, read from the environment once at start. A bad value fails loudly, by name."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# A PostgreSQL schema name we create and quote ourselves (server/schema.py).
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class ConfigError(Exception):
    """A required or malformed environment variable; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


# App webhook types (API.md "Alerts, app webhooks"); transaction.created only on request.
EVENT_TYPES = (
    "transaction.created", "balance.low", "balance.depleted", "balance.recovered",
    "purchase.completed", "purchase.reversed", "payment.needs_review", "hold.expired",
    "plan.renewed", "plan.past_due", "plan.canceled", "top_up.requested", "top_up.failed",
    "top_up.limit_reached",
)
DEFAULT_EVENTS = tuple(t for t in EVENT_TYPES if t != "transaction.created")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _seconds(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """A comma list of waits in seconds (each 0 < s <= 7 days), or the default."""
    raw = _list(env, name)
    if not raw:
        return default
    try:
        waits = tuple(float(part) for part in raw)
    except ValueError:
        raise ConfigError(f"{name} must be seconds separated by commas, got {env[name]!r}"
                          ) from None
    if not all(0 < wait <= 7 * 86400 for wait in waits):
        raise ConfigError(f"{name}: each wait must be more than 0 and at most 7 days")
    return waits


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


Scope = Literal["read", "spend", "admin"]
# A service key's scopes, each allowing what the ones before it do: `read` the GET routes,
# `spend` also what a worker needs (debit, charge, check, holds, tokens, checkout), `admin`
# everything (credit, adjust, plans, settings, event retries).
SCOPES: tuple[Scope, ...] = ("read", "spend", "admin")
_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """A backend's key: its name (what logs say instead of the key), its scope, the key."""

    name: str
    scope: Scope
    secret: str = field(repr=False)

    def allows(self, needed: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def service_keys(entries: tuple[str, ...]) -> tuple[ServiceKey, ...]:
    """BALANCE_SERVICE_KEYS: `name:scope:key` entries, or a bare key (an admin key named
    key1, key2... by position, as every key was before scopes)."""
    keys: list[ServiceKey] = []
    for i, entry in enumerate(entries, 1):
        parts = entry.split(":")
        if len(parts) == 3:
            name, scope, secret = parts
            if scope not in SCOPES:
                raise ConfigError(f"BALANCE_SERVICE_KEYS: key {name!r}: scope {scope!r} is "
                                  f"not one of {', '.join(SCOPES)}")
            if not _KEY_NAME.fullmatch(name):
                raise ConfigError(f"BALANCE_SERVICE_KEYS: key name {name!r}: 1-64 of "
                                  "A-Za-z0-9_.-")
            keys.append(ServiceKey(name, scope, secret))
        else:
            keys.append(ServiceKey(f"key{i}", "admin", entry))
    for key in keys:
        if len(key.secret) < 16:
            raise ConfigError(f"BALANCE_SERVICE_KEYS: key {key.name!r} must be at least 16 "
                              "characters")
    names = [key.name for key in keys]
    if len(set(names)) < len(names) or len({k.secret for k in keys}) < len(keys):
        raise ConfigError("BALANCE_SERVICE_KEYS: each key needs its own name and its own key")
    return tuple(keys)


def standard_webhooks_key(name: str, secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` + base64), or ConfigError."""
    raw = secret.removeprefix("whsec_").rstrip("=")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} must be 'whsec_' followed by base64") from None
    if not key:
        raise ConfigError(f"{name} is empty")
    return key


@dataclass(frozen=True)
class Database:
    """Where the database is and how to reach it: what the server and every command that
    opens it (migrate, reconcile, import) read."""

    url: str = field(repr=False)
    # The PostgreSQL schema that holds every object of ours (migrate creates it).
    schema: str = "balance"
    # "transaction": the URL is a transaction-mode pooler (PgBouncer, Supavisor), so no
    # statement stays prepared across transactions; "none": a direct or session-mode URL;
    # "auto": read from the URL (server/db.py `behind_pooler`).
    pooler: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Database:
        env = os.environ if env is None else env
        url = env.get("DATABASE_URL", "")
        if not url:
            raise ConfigError("DATABASE_URL is required (e.g. postgresql://user@host/db)")
        schema = env.get("BALANCE_DB_SCHEMA") or "balance"
        if not SCHEMA_NAME.fullmatch(schema) or schema == "public":
            raise ConfigError("BALANCE_DB_SCHEMA must be a schema of its own: lower-case "
                              "letters, digits and _, not 'public'")
        pooler = env.get("BALANCE_DB_POOLER") or "auto"
        if pooler not in ("auto", "transaction", "none"):
            raise ConfigError("BALANCE_DB_POOLER must be 'auto', 'transaction' or 'none'")
        return cls(url, schema, pooler)


@dataclass(frozen=True)
class Settings:
    # Secrets (and URLs that may carry a password) stay out of repr, and so out of logs.
    database_url: str = field(repr=False)
    service_keys: tuple[ServiceKey, ...] = field(repr=False)
    token_secret: str = field(repr=False)
    redis_url: str | None = field(default=None, repr=False)
    welcome_credits: int = 0
    # The catalog (server/catalog.py loads and validates it at start).
    catalog_file: str | None = None
    prices_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # The app's own JWTs (Supabase, NextAuth, Firebase...), accepted beside ours.
    jwt_secret: str | None = field(default=None, repr=False)
    jwks_file: str | None = None
    jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_account_claim: str = "sub"
    # Payments
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    # Standard Webhooks (Dodo): the HMAC key, decoded from its `whsec_` + base64 secret.
    dodo_webhook_key: bytes | None = field(default=None, repr=False)
    refund_policy: str = "debt"  # or "clamp"
    # Checkout: the providers' API keys, where their APIs are (None: the real ones), and
    # the prefixes a success or cancel URL must start with (no open redirects).
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    dodo_api_key: str | None = field(default=None, repr=False)
    dodo_api_base: str | None = None
    checkout_return_urls: tuple[str, ...] = ()
    # WebSocket
    allowed_origins: tuple[str, ...] = ()
    ws_max_sockets_per_account: int = 50
    ws_auth_timeout: float = 10.0
    ws_ping_interval: float = 20.0
    ws_send_timeout: float = 10.0
    drain_seconds: float = 3.0
    # Operations
    db_pool_size: int = 20
    db_schema: str = "balance"  # as Database
    db_pooler: str = "auto"
    # Group commit: how many batched ledger round trips may run at once. Fewer means bigger
    # batches (fewer commits); more means one slow statement delays fewer others.
    db_batch_inflight: int = 1
    sweep_interval: float = 0.5
    idempotency_retention_days: int = 30
    # Delivered app webhook events (and their attempts) are deleted this long after delivery.
    event_retention_days: int = 30
    channel_prefix: str = "balance"
    metrics_token: str | None = field(default=None, repr=False)
    # Rate limits (server/limiter.py reads them), and sockets not yet authenticated: per
    # process and per client address; when full, the oldest waiting is closed (push/lobby.py).
    rate_limits: str = ""
    ws_max_unauthenticated: int = 1000
    # Unset: the process cap. Behind a load balancer every client has the balancer's
    # address, so a per-address cap of its own would evict a reconnect herd's sockets
    # before they could send auth; deployments reached directly set it (e.g. 100).
    ws_max_unauthenticated_per_address: int = 1000
    # App webhooks (server/outbox.py): where, signed with what, which types; each attempt's
    # timeout, and how long a claimed event is this instance's before another may take it.
    app_webhook_url: str | None = None
    app_webhook_secret: str | None = field(default=None, repr=False)
    app_webhook_events: tuple[str, ...] = ()
    app_webhook_timeout: float = 10.0
    # Seconds before attempt 2, 3, ... (API.md: about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
    # 10 h); after the last, the event is failed.
    app_webhook_retry: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0,
                                            36000.0)
    outbox_lease: float = 30.0
    # Logs (server/logs.py): "text" or "json" lines, and the level of ours and uvicorn's.
    log_format: str = "text"
    log_level: str = "info"

    @property
    def database(self) -> Database:
        return Database(self.database_url, self.db_schema, self.db_pooler)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every setting from the environment (os.environ by default)."""
        env = os.environ if env is None else env
        database = Database.from_env(env)
        entries = _list(env, "BALANCE_SERVICE_KEYS")
        if not entries:
            raise ConfigError("BALANCE_SERVICE_KEYS is required: a comma list of service keys")
        keys = service_keys(entries)
        token_secret = env.get("BALANCE_TOKEN_SECRET", "")
        if len(token_secret) < 32:
            raise ConfigError("BALANCE_TOKEN_SECRET is required, at least 32 characters")
        refund_policy = env.get("BALANCE_REFUND_POLICY", "debt")
        if refund_policy not in ("debt", "clamp"):
            raise ConfigError("BALANCE_REFUND_POLICY must be 'debt' or 'clamp'")
        dodo_secret = env.get("BALANCE_DODO_WEBHOOK_SECRET") or None
        dodo_key = None if dodo_secret is None else standard_webhooks_key(
            "BALANCE_DODO_WEBHOOK_SECRET", dodo_secret)
        app_jwts = [name for name in ("BALANCE_JWT_SECRET", "BALANCE_JWKS_FILE",
                                      "BALANCE_JWKS_URL") if env.get(name)]
        if app_jwts:
            for name in ("BALANCE_JWT_AUDIENCE", "BALANCE_JWT_ISSUER"):
                if not env.get(name):
                    raise ConfigError(
                        f"{name} is required with {app_jwts[0]}: the app's JWTs are checked "
                        "for their audience and issuer (a JWKS like Firebase's or Auth0's "
                        "signs tokens of other projects too)")
        webhook_url = env.get("BALANCE_APP_WEBHOOK_URL") or None
        webhook_secret = env.get("BALANCE_APP_WEBHOOK_SECRET") or None
        events = _list(env, "BALANCE_APP_WEBHOOK_EVENTS") or DEFAULT_EVENTS
        if webhook_url is not None:
            if not webhook_url.startswith(("https://", "http://")):
                raise ConfigError("BALANCE_APP_WEBHOOK_URL must be an http(s) URL")
            if webhook_secret is None:
                raise ConfigError("BALANCE_APP_WEBHOOK_SECRET (whsec_...) is required with "
                                  "BALANCE_APP_WEBHOOK_URL: app webhooks are always signed")
            standard_webhooks_key("BALANCE_APP_WEBHOOK_SECRET", webhook_secret)
            unknown = sorted(set(events) - set(EVENT_TYPES))
            if unknown:
                raise ConfigError(f"BALANCE_APP_WEBHOOK_EVENTS: unknown {', '.join(unknown)} "
                                  f"(known: {', '.join(EVENT_TYPES)})")
        waiting = _int(env, "BALANCE_WS_MAX_UNAUTHENTICATED", 1000)
        waiting_per_address = _int(env, "BALANCE_WS_MAX_UNAUTHENTICATED_PER_ADDRESS", waiting)
        for name, value in (("BALANCE_WS_MAX_UNAUTHENTICATED", waiting),
                            ("BALANCE_WS_MAX_UNAUTHENTICATED_PER_ADDRESS", waiting_per_address)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1 (sockets that may wait for "
                                  "their auth frame)")
        event_retention = _int(env, "BALANCE_EVENT_RETENTION_DAYS", 30)
        if event_retention < 1:
            raise ConfigError("BALANCE_EVENT_RETENTION_DAYS must be at least 1")
        log_format = env.get("BALANCE_LOG_FORMAT", "text").strip().lower() or "text"
        if log_format not in ("text", "json"):
            raise ConfigError(f"BALANCE_LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
        log_level = env.get("BALANCE_LOG_LEVEL", "info").strip().lower() or "info"
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"BALANCE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                              f"got {log_level!r}")
        welcome = _int(env, "BALANCE_WELCOME_CREDITS", 0)
        if not 0 <= welcome <= 10**12:
            raise ConfigError("BALANCE_WELCOME_CREDITS must be between 0 and 10^12")
        values: dict[str, object] = dict(
            database_url=database.url,
            service_keys=keys,
            token_secret=token_secret,
            redis_url=env.get("REDIS_URL") or None,
            welcome_credits=welcome,
            catalog_file=env.get("BALANCE_CATALOG_FILE") or None,
            prices_file=env.get("BALANCE_PRICES_FILE") or None,
            host=env.get("HOST", "127.0.0.1"),
            port=_int(env, "PORT", 8000),
            jwt_secret=env.get("BALANCE_JWT_SECRET") or None,
            jwks_file=env.get("BALANCE_JWKS_FILE") or None,
            jwks_url=env.get("BALANCE_JWKS_URL") or None,
            jwt_audience=env.get("BALANCE_JWT_AUDIENCE") or None,
            jwt_issuer=env.get("BALANCE_JWT_ISSUER") or None,
            jwt_account_claim=env.get("BALANCE_JWT_ACCOUNT_CLAIM") or "sub",
            stripe_webhook_secret=env.get("BALANCE_STRIPE_WEBHOOK_SECRET") or None,
            dodo_webhook_key=dodo_key,
            refund_policy=refund_policy,
            stripe_api_key=env.get("BALANCE_STRIPE_API_KEY") or None,
            stripe_api_base=env.get("BALANCE_STRIPE_API_BASE") or None,
            dodo_api_key=env.get("BALANCE_DODO_API_KEY") or None,
            dodo_api_base=env.get("BALANCE_DODO_API_BASE") or None,
            checkout_return_urls=_list(env, "BALANCE_CHECKOUT_RETURN_URLS"),
            allowed_origins=_list(env, "BALANCE_ALLOWED_ORIGINS"),
            ws_max_sockets_per_account=_int(env, "BALANCE_WS_MAX_SOCKETS_PER_ACCOUNT", 50),
            ws_auth_timeout=_float(env, "BALANCE_WS_AUTH_TIMEOUT", 10.0),
            ws_ping_interval=_float(env, "BALANCE_WS_PING_INTERVAL", 20.0),
            ws_send_timeout=_float(env, "BALANCE_WS_SEND_TIMEOUT", 10.0),
            drain_seconds=_float(env, "BALANCE_DRAIN_SECONDS", 3.0),
            db_pool_size=_int(env, "BALANCE_DB_POOL_SIZE", 20),
            db_batch_inflight=_int(env, "BALANCE_DB_BATCH_INFLIGHT", 1),
            db_schema=database.schema,
            db_pooler=database.pooler,
            sweep_interval=_float(env, "BALANCE_SWEEP_INTERVAL", 0.5),
            idempotency_retention_days=_int(env, "BALANCE_IDEMPOTENCY_RETENTION_DAYS", 30),
            event_retention_days=event_retention,
            channel_prefix=env.get("BALANCE_CHANNEL_PREFIX", "balance"),
            metrics_token=env.get("BALANCE_METRICS_TOKEN") or None,
            rate_limits=env.get("BALANCE_RATE_LIMITS", ""),
            ws_max_unauthenticated=waiting,
            ws_max_unauthenticated_per_address=waiting_per_address,
            app_webhook_url=webhook_url,
            app_webhook_secret=webhook_secret,
            app_webhook_events=events if webhook_url else (),
            app_webhook_timeout=_float(env, "BALANCE_APP_WEBHOOK_TIMEOUT", 10.0),
            app_webhook_retry=_seconds(env, "BALANCE_APP_WEBHOOK_RETRY",
                                       Settings.app_webhook_retry),
            outbox_lease=_float(env, "BALANCE_OUTBOX_LEASE", 30.0),
            log_format=log_format,
            log_level=log_level,
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
