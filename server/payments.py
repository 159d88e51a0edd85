"""The SQL side of payment webhooks: purchases, refunds and unfulfilled events.

Each call is one round trip running one transaction in schema.sql's payments section, so
the payment record (the durable dedupe), the idempotency key and the ledger row commit
together or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.ledger import Pool, frame_from_row
from server.messages import BalanceFrame


@dataclass(frozen=True, slots=True)
class Purchase:
    """A paid purchase of `credits` for `account_id`, identified by the provider's payment id."""

    provider: str
    payment_id: str
    account_id: str
    credits: int
    amount_paid: int | None
    currency: str | None
    event_id: str


@dataclass(frozen=True, slots=True)
class Refund:
    """Money given back on a payment.

    `refunded` is this refund's amount (Dodo) or, when `cumulative`, the payment's running
    total so far (Stripe's `amount_refunded`); `paid` is what it is a share of, if known.
    """

    provider: str
    payment_id: str
    refund_key: str
    refunded: int | None
    paid: int | None
    cumulative: bool
    full: bool
    event_id: str


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """`result` is fulfilled / duplicate / reversed / nothing_to_reverse / pending."""

    result: str
    body: dict[str, Any]
    frame: BalanceFrame | None


def _outcome(row: asyncpg.Record | None, reason: str) -> PaymentOutcome:
    assert row is not None
    body: dict[str, Any] = json.loads(row["body"] or "{}")
    frame = None
    if not row["replayed"] and row["account_id"] is not None:
        frame = frame_from_row(row, reason)
    return PaymentOutcome(str(body.get("result")), body, frame)


def _jsonb(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Payments:
    """Payment fulfilment over one asyncpg pool."""

    def __init__(self, pool: Pool, welcome_credits: int) -> None:
        self.pool = pool
        self.welcome = welcome_credits

    async def purchase(self, p: Purchase, refund_mode: str) -> PaymentOutcome:
        """Credit a paid purchase once; then apply any refund that arrived before it."""
        metadata = {"provider": p.provider, "payment_id": p.payment_id, "event_id": p.event_id,
                    "amount_paid": p.amount_paid, "currency": p.currency}
        row = await self.pool.fetchrow(
            "SELECT (r).* FROM"
            " (SELECT balance_purchase($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10) r) s",
            p.provider, p.payment_id, p.account_id, p.credits, p.amount_paid, p.currency,
            p.event_id, _jsonb(metadata), self.welcome, refund_mode,
        )
        return _outcome(row, f"purchase via {p.provider}")

    async def refund(self, r: Refund, refund_mode: str) -> PaymentOutcome:
        """Store a refund once and reverse its share of the payment's credits (or wait)."""
        row = await self.pool.fetchrow(
            "SELECT (r).* FROM (SELECT balance_refund($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) r) s",
            r.provider, r.payment_id, r.refund_key, r.refunded, r.paid, r.cumulative, r.full,
            r.event_id, self.welcome, refund_mode,
        )
        return _outcome(row, f"refund via {r.provider}")

    async def record_unfulfilled(
        self, provider: str, event_id: str, event_type: str, payment_id: str | None,
        problem: str, payload: bytes,
    ) -> str:
        """Keep a paid event we cannot fulfil for an operator: recorded / duplicate / fulfilled."""
        text = payload.decode()
        if "\\u0000" in text:
            # jsonb refuses NUL characters; keep the event as one JSON string instead.
            text = json.dumps({"raw": text})
        result: str = await self.pool.fetchval(
            "SELECT balance_record_unfulfilled($1,$2,$3,$4,$5,$6::jsonb)",
            provider, event_id, event_type, payment_id, problem, text,
        )
        return result
