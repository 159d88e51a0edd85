"""Carrying out a payment event: credit a purchase once, reverse refunds, keep the rest.

Each movement is one call of schema.sql's payments functions through `Ledger.move`, so the
payment record (the durable dedupe), the idempotency key and the ledger row commit
together or not at all, and the change leaves through the ledger's one door.

Exactly once: a purchase is keyed by the provider's payment id (Stripe PaymentIntent, Dodo
payment_id), not by the event or delivery id, so a Checkout session and its PaymentIntent
credit once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg

from server import metrics
from server.ledger import Ledger, jsonb
from server.payments.events import Action, Ignore, Purchase, Refund, Unfulfilled

log = logging.getLogger("balance.payments")

_PURCHASE_SQL = (
    "SELECT (r).* FROM (SELECT balance_purchase($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10) r) s"
)
_REFUND_SQL = (
    "SELECT (r).* FROM (SELECT balance_refund($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) r) s"
)
_UNFULFILLED_SQL = "SELECT balance_record_unfulfilled($1,$2,$3,$4,$5,$6::jsonb)"


class Fulfilment:
    """Payment events become ledger movements."""

    def __init__(self, ledger: Ledger, refund_policy: str) -> None:
        self._ledger = ledger
        self._refund_policy = refund_policy

    async def fulfil(
        self, provider: str, event_id: str, event_type: str, action: Action, payload: bytes
    ) -> dict[str, Any]:
        """Carry out `action`; the webhook's answer: `{"received": true, "result": ...}`.

        `result` is fulfilled / duplicate / reversed / nothing_to_reverse / pending /
        ignored / recorded_not_fulfilled.
        """
        answer: dict[str, Any] = {"received": True}
        if isinstance(action, Ignore):
            return {**answer, "result": "ignored", "reason": action.reason}
        if isinstance(action, Unfulfilled):
            return {**answer, **await self._unfulfilled(provider, event_id, event_type, action,
                                                        payload)}
        if isinstance(action, Purchase):
            try:
                body = await self._purchase(action)
            except asyncpg.UniqueViolationError:
                # The app itself used our idempotency key shape on /credit for this account.
                problem = f"idempotency key webhook:{provider}:{action.payment_id} already used"
                return {**answer, **await self._unfulfilled(
                    provider, event_id, event_type, Unfulfilled(problem, action.payment_id),
                    payload)}
            if body["result"] == "fulfilled":
                metrics.purchases.labels(provider).inc()
                if "credits_reversed" in body:
                    metrics.reversals.labels(provider).inc()
        else:
            body = await self._refund(action)
            if body["result"] == "reversed":
                metrics.reversals.labels(provider).inc()
        return {**answer, "result": body["result"], "payment_id": action.payment_id,
                **{k: v for k, v in body.items() if k != "result"}}

    async def _purchase(self, p: Purchase) -> dict[str, Any]:
        """Credit a paid purchase once; then apply any refund that arrived before it."""
        metadata = {"provider": p.provider, "payment_id": p.payment_id, "event_id": p.event_id,
                    "amount_paid": p.amount_paid, "currency": p.currency}
        row = await self._ledger.move(
            _PURCHASE_SQL, p.provider, p.payment_id, p.account_id, p.credits, p.amount_paid,
            p.currency, p.event_id, jsonb(metadata), self._ledger.welcome, self._refund_policy,
            reason=f"purchase via {p.provider}",
        )
        body: dict[str, Any] = json.loads(row["body"] or "{}")
        return body

    async def _refund(self, r: Refund) -> dict[str, Any]:
        """Store a refund once and reverse its share of the payment's credits (or wait)."""
        row = await self._ledger.move(
            _REFUND_SQL, r.provider, r.payment_id, r.refund_key, r.refunded, r.paid,
            r.cumulative, r.full, r.event_id, self._ledger.welcome, self._refund_policy,
            reason=f"refund via {r.provider}",
        )
        body: dict[str, Any] = json.loads(row["body"] or "{}")
        return body

    async def _unfulfilled(
        self, provider: str, event_id: str, event_type: str, action: Unfulfilled, payload: bytes
    ) -> dict[str, Any]:
        """Keep a paid event we cannot fulfil for an operator, once; answered 200, because a
        retry cannot add what it lacks and an error would make the provider redeliver it."""
        text = payload.decode()
        if "\\u0000" in text:
            # jsonb refuses NUL characters; keep the event as one JSON string instead.
            text = json.dumps({"raw": text})
        state: str = await self._ledger.pool.fetchval(
            _UNFULFILLED_SQL, provider, event_id, event_type, action.payment_id, action.problem,
            text,
        )
        if state == "fulfilled":  # another event already credited this payment
            return {"result": "duplicate", "payment_id": action.payment_id}
        if state == "recorded":
            log.warning("%s event %s not fulfilled: %s", provider, event_id, action.problem)
        return {"result": "recorded_not_fulfilled", "problem": action.problem}
