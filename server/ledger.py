"""Money movements: each one SQL function call, one transaction, and one door out.

The functions in schema.sql do the work inside PostgreSQL (idempotency read, conditional
UPDATE, ledger insert, stored response) so a movement never reads and then writes from
Python. They answer result codes; a refusal becomes an `errors.Problem` here, and the HTTP
layer alone turns its code into a status.

Every committed change, whoever asked for it (the API, a payment webhook, the sweeper),
leaves through `Ledger._committed`: the one place that hands it on (to the push
publisher) once PostgreSQL has committed it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from server import errors, metrics
from server.audit import Audit
from server.db import jsonb, movement, movements
from server.group_commit import GroupCommit
from server.messages import BalanceFrame, ChangeInfo

log = logging.getLogger("balance.ledger")

OnCommit = Callable[[BalanceFrame], None]
"""Called once per committed change with the account's new state; must not block or raise."""

_hash_encoder = msgspec.json.Encoder(order="sorted")


def request_hash(operation: str, body: msgspec.Struct) -> bytes:
    """Fingerprint of a request for idempotency: same key + different body is a conflict."""
    return hashlib.sha256(operation.encode() + b"\0" + _hash_encoder.encode(body)).digest()


@dataclass(frozen=True, slots=True)
class Outcome:
    """A movement that committed, or replayed one that had: the response JSON."""

    body: bytes
    replayed: bool


def _refusal(row: asyncpg.Record) -> errors.Problem:
    """The Problem for a movement that wrote nothing."""
    details: dict[str, Any] = json.loads(row["body"] or "{}")
    match row["result"]:
        case "insufficient":
            metrics.insufficient.inc()
            return errors.insufficient_credits(details["required"], details["available"])
        case "conflict":
            return errors.idempotency_conflict()
        case "not_found":
            return errors.not_found(details.get("message", "no such hold"))
        case "not_active":
            return errors.hold_not_active(details.get("status", "unknown"))
        case "limit_reached" if "operation" in details:  # a plan's, per operation
            return errors.limit_reached(details["operation"], details["limit"],
                                        details["used"], details["resets_at"])
        case "limit_reached":  # the account's spend cap
            return errors.spend_limit_reached(details["limit"], details["used"],
                                              details["resets_at"], details["period"])
        case "invalid":  # what the request lacks for the data it met
            return errors.invalid_request(details["detail"])
        case "over_held":
            return errors.invalid_request(
                f"amount: must not exceed the held amount ({details.get('held')})")
    raise AssertionError(f"unknown movement result {row['result']!r}")


def _transaction_reason(row: asyncpg.Record) -> str | None:
    """The reason of the ledger row a committed change wrote, from its answer's
    `transaction` (the result row does not carry it), so its push names it as the ledger
    does."""
    if row["result"] != "ok" or row["tx_id"] is None or row["replayed"]:
        return None
    transaction = msgspec.json.decode(row["body"]).get("transaction")
    return None if transaction is None else transaction["reason"]


def frame_from_row(row: asyncpg.Record, reason: str | None) -> BalanceFrame:
    """The push frame for a balance_result row that committed a change."""
    hold_id = row["hold_id"]
    return BalanceFrame(
        account_id=row["account_id"],
        balance=row["balance"],
        held=row["held"],
        available=row["balance"] - row["held"],
        version=row["version"],
        low=bool(row["low"]),
        change=ChangeInfo(
            kind=row["kind"],
            amount=row["amount"],
            reason=reason,
            transaction_id=row["tx_id"],
            hold_id=str(hold_id) if hold_id is not None else None,
        ),
    )


_HOLD_SQL = (
    "SELECT (r).* FROM (SELECT balance.balance_hold($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10) r) s"
)
_RESOLVE_SQL = (
    "SELECT (r).* FROM (SELECT balance.balance_resolve_hold($1::uuid,$2,$3,$4::jsonb) r) s"
)


class Ledger:
    """The money movements over one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, welcome_credits: int, max_inflight: int = 1) -> None:
        self.pool = pool
        self.welcome = welcome_credits
        self._hooks: list[OnCommit] = []
        self._group = GroupCommit(pool, welcome_credits, max_inflight)
        self._settings: tuple[list[str] | None, int | None] | None = None

    def configure(self, events: Sequence[str] | None, low_balance: int | None) -> None:
        """What the database's triggers need of this deployment's configuration: the app
        webhook types subscribed (None: this instance delivers none, and has no say), and
        the catalog's default low-balance threshold (schema.sql `settings`). Written by
        `write_settings`, at start and, if the database was down then, by the jobs loop."""
        self._settings = (None if events is None else list(events), low_balance)

    async def write_settings(self) -> None:
        """Write what `configure` was given, once (every instance, at start)."""
        if self._settings is None:
            return
        events, low_balance = self._settings
        try:
            subscribed = await self.pool.fetchval(
                "SELECT balance.balance_configure($1::text[], $2)", events, low_balance)
        except asyncpg.LockNotAvailableError:
            # A table lock it needed waited past its bound (schema.sql balance__lock_wait):
            # nothing changed, and the jobs loop writes it again.
            log.warning("the configuration waited too long for a table lock; retrying")
            return
        self._settings = None
        if events is None and subscribed:
            log.warning("app webhooks %s are subscribed (by an instance with "
                        "BALANCE_APP_WEBHOOK_URL): this one writes them, and delivers none",
                        ", ".join(subscribed))

    def on_commit(self, hook: OnCommit) -> None:
        """Hand every committed change to `hook` from now on (the push publisher)."""
        self._hooks.append(hook)

    def _committed(self, row: asyncpg.Record, reason: str | None) -> None:
        """The door: a change PostgreSQL committed goes on from here, and only from here."""
        if row["replayed"]:
            metrics.idempotent_replays.inc()
        elif row["account_id"] is not None:
            frame = frame_from_row(row, reason)
            for hook in self._hooks:
                hook(frame)

    def outcome(self, row: asyncpg.Record) -> Outcome:
        """The answer of a row `move` ran: its body, or the refusal it is."""
        if row["result"] != "ok":
            raise _refusal(row)
        return Outcome((row["body"] or "{}").encode(), bool(row["replayed"]))

    def _outcome(self, row: asyncpg.Record, reason: str | None) -> Outcome:
        if row["result"] == "ok":
            self._committed(row, reason)
        elif row["account_id"] is not None:
            # Refused after renewing the account's plan, which committed: pushed.
            self._committed(row, None)
        return self.outcome(row)

    async def post(
        self,
        account_id: str,
        *,
        kind: str,
        amount: int,
        reason: str | None,
        idempotency_key: str,
        fingerprint: bytes,
        metadata: dict[str, Any] | None = None,
        expires_at: datetime | None = None,
        mode: str = "available",
        priority: int | None = None,
        operation: str | None = None,
        quantity: int | None = None,
        audit: Audit | None = None,
    ) -> Outcome:
        """One signed ledger row (debit when negative), atomically with its idempotency key;
        a credit opens a grant (`priority` None: its kind's default). A charge names its
        `operation` and `quantity`: the account's plan may price it otherwise than `amount`
        (the catalog's price) and refuse it at its limit. An operator's commits with its
        `audit` row."""
        row = await self._group.submit((
            account_id, idempotency_key, fingerprint, kind, amount, reason, jsonb(metadata),
            expires_at, mode, priority, operation, quantity,
        ), audit)
        outcome = self._outcome(row, reason)
        if not outcome.replayed:
            if kind == "usage":
                metrics.debits.inc()
            elif kind in ("grant", "purchase", "refund"):
                metrics.credits.labels(kind).inc()
        return outcome

    async def hold(
        self,
        account_id: str,
        *,
        amount: int,
        ttl_seconds: int,
        reason: str,
        idempotency_key: str,
        fingerprint: bytes,
        metadata: dict[str, Any] | None,
        operation: str | None = None,
        quantity: int | None = None,
    ) -> Outcome:
        """Reserve `amount` of the available credits until captured, released or expired.
        A hold for `operation` (amount: the catalog's price x quantity) is priced and limited
        by the account's plan as a charge is, in SQL."""
        row = await movement(
            self.pool, _HOLD_SQL, account_id, self.welcome, idempotency_key, fingerprint,
            amount, ttl_seconds, reason, jsonb(metadata), operation, quantity,
        )
        return self._outcome(row, reason)

    async def resolve_hold(
        self, hold_id: str, action: str, *, amount: int | None = None,
        metadata: dict[str, Any] | None = None, audit: Audit | None = None,
    ) -> Outcome:
        """'capture' amount (None: all) and release the rest, or 'release' it all. The same
        capture or release of a hold already resolved so replays."""
        row = await movement(self.pool, _RESOLVE_SQL, hold_id, action, amount, jsonb(metadata),
                             then=None if audit is None else audit.after)
        outcome = self._outcome(row, _transaction_reason(row))  # a capture: the hold's
        if action == "capture" and not outcome.replayed:
            metrics.debits.inc()
        return outcome

    async def set_alerts(self, account_id: str, low_balance: int | None,
                         audit: Audit | None = None) -> Outcome:
        """The account's own low_balance threshold (None: its plan's or the catalog's); the
        change is pushed, as it may turn `low` on or off."""
        row = await movement(
            self.pool, "SELECT (r).* FROM balance.balance_set_alerts($1, $2, $3) r", account_id,
            self.welcome, low_balance, then=None if audit is None else audit.after)
        return self._outcome(row, None)

    async def move(self, sql: str, *args: Any, reason: str | None = None) -> asyncpg.Record:
        """Run one movement function of another domain (payments): its committed change
        leaves through the same door (`reason` None: its transaction's). `sql` selects one
        balance_result row."""
        row = await movement(self.pool, sql, *args)
        if row["result"] == "ok":
            self._committed(row, reason if reason is not None else _transaction_reason(row))
        return row

    async def move_many(self, sql: str, *args: Any, reason: str | None,
                        audit: Audit | None = None) -> list[asyncpg.Record]:
        """As `move`, for a function answering one row per committed change (each leaves
        through the door, in order) and, last, the one whose body is the response."""
        rows = await movements(self.pool, sql, *args, then=None if audit is None else audit.after)
        if rows and rows[-1]["result"] != "ok":
            raise _refusal(rows[-1])
        for row in rows:
            self._committed(row, reason)
        return rows

    async def sweep(self, limit: int = 500) -> list[str]:
        """Expire due holds and lots; the kind of each change committed."""
        rows = await movements(self.pool, "SELECT (r).* FROM balance.balance_sweep($1) r", limit)
        for row in rows:
            self._committed(row, None)
        return [row["kind"] for row in rows]

    async def account(self, account_id: str) -> bytes:
        """The account object as JSON; an unknown one reads as a new one would, and is not
        created (a read never writes: its welcome credits come with its first movement)."""
        text: str = await self.pool.fetchval(
            "SELECT balance.balance_account($1, $2)::text", account_id, self.welcome
        )
        return text.encode()

    async def open(self, account_id: str) -> bytes:
        """Create the account if new (its welcome credits granted once), as JSON. Being
        created moves nothing a reader did not already see (it read as new), so no push."""
        row = await movement(self.pool, "SELECT balance.balance_open_account($1, $2)::text AS a",
                             account_id, self.welcome)
        return str(row["a"]).encode()

    async def snapshot(self, account_ids: Sequence[str]) -> list[BalanceFrame]:
        """Current state of each account (as a new one would read if unknown), for
        WebSocket snapshots."""
        if not account_ids:
            return []
        rows = await self.pool.fetch(
            "SELECT balance.balance_account(id, $2)::text AS j FROM unnest($1::text[]) AS id",
            list(account_ids), self.welcome,
        )
        frames = []
        for row in rows:
            a = json.loads(row["j"])
            frames.append(BalanceFrame(a["account_id"], a["balance"], a["held"], a["available"],
                                       a["version"], a["low"]))
        return frames

    async def reconcile(self) -> list[asyncpg.Record]:
        """Accounts whose totals disagree with the ledger or with their holds."""
        return list(await self.pool.fetch("SELECT * FROM balance.balance_reconcile()"))
