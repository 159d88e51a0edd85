"""Plans: assigning one, renewing allowances at period ends, the usage dashboard, checks.

The work is in schema.sql ("plans"): periods are computed from the anchor in PostgreSQL,
renewals claim due accounts with SKIP LOCKED and record each period once, and a charge is
priced and limited by `balance_post` itself. The catalog's plans are copied into the
`plans` table at start so those functions can read them.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from server import errors
from server.audit import Audit
from server.catalog import Catalog
from server.db import jsonb
from server.ledger import Ledger, Outcome

_SET_SQL = "SELECT (r).* FROM balance.balance_set_plan($1,$2,$3,$4,$5,$6) r"
_RENEW_SQL = "SELECT (r).* FROM balance.balance_renew($1) r"
_END_SQL = "SELECT (r).* FROM balance.balance_end_subscriptions($1) r"


class Plans:
    """Plan movements over the ledger's pool; their changes leave through its door."""

    def __init__(self, ledger: Ledger, catalog: Catalog) -> None:
        self._ledger = ledger
        self._catalog = catalog

    async def sync(self) -> None:
        """Write the catalog's plans to the database (at start, by every instance)."""
        plans = {name: msgspec.to_builtins(plan) for name, plan in self._catalog.plans.items()}
        if plans:
            await self._ledger.pool.execute("SELECT balance.balance_sync_plans($1::jsonb)",
                                            jsonb(plans))

    async def assign(
        self, account_id: str, plan: str | None, anchor: datetime | None,
        idempotency_key: str, fingerprint: bytes, audit: Audit | None = None,
    ) -> Outcome:
        """Assign, change or (None) remove the account's plan: `{"account"}`; 422 for a plan
        the catalog does not have."""
        if plan is not None and plan not in self._catalog.plans:
            raise errors.invalid_request(f"plan: no plan {plan!r} in the catalog")
        rows = await self._ledger.move_many(
            _SET_SQL, account_id, self._ledger.welcome, idempotency_key, fingerprint, plan,
            anchor, reason=None, audit=audit)
        last = rows[-1]
        return Outcome(last["body"].encode(), bool(last["replayed"]))

    async def renew(self, limit: int = 500) -> int:
        """Renew the allowances of up to `limit` accounts whose period ended, and end up to
        `limit` subscriptions whose cancellation at the period's end has come; the number of
        changes committed (expiries, grants, plans ended)."""
        renewed = await self._ledger.move_many(_RENEW_SQL, limit, reason=None)
        ended = await self._ledger.move_many(_END_SQL, limit, reason="subscription ended")
        return len(renewed) + len(ended)

    async def dashboard(self, account_id: str) -> bytes:
        """`{"plan", "period", "period_start", "period_end", "allowance",
        "allowance_remaining", "rollover", "limits": {op: {"limit", "used"}}}`."""
        text: str = await self._ledger.pool.fetchval(
            "SELECT balance.balance_plan_json($1, $2)::text", account_id, self._ledger.welcome)
        return text.encode()

    async def check(
        self, account_id: str, *, operation: str | None, quantity: int, amount: int | None,
    ) -> bytes:
        """What a charge of `quantity` × `operation`, or a debit of `amount`, would answer."""
        base = self._catalog.prices.get(operation) if operation is not None else None
        text: str = await self._ledger.pool.fetchval(
            "SELECT balance.balance_check($1, $2, $3, $4, $5, $6)::text", account_id,
            self._ledger.welcome, operation, quantity, base, amount)
        return text.encode()

