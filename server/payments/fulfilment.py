"""Carrying out a payment event: credit a purchase once, reverse refunds, keep the rest.

Each movement is one call of schema.sql's payments functions through `Ledger.move`, so the
payment record (the durable dedupe), the idempotency key and the ledger row commit
together or not at all, and the change leaves through the ledger's one door.

Exactly once: a purchase is keyed by the provider's payment id (Stripe PaymentIntent, Dodo
payment_id), not by the event or delivery id, so a Checkout session and its PaymentIntent
credit once.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import asyncpg

from server import errors, metrics
from server.catalog import Catalog, Unpriced
from server.db import jsonb
from server.ledger import Ledger, Outcome
from server.payments.events import (
    Action,
    Dispute,
    Ignore,
    PaymentFailed,
    Purchase,
    Refund,
    SubscriptionChanged,
    SubscriptionFailed,
    SubscriptionPaid,
    Unfulfilled,
)
from server.payments.subscriptions import ForReview, Subscriptions

log = logging.getLogger("balance.payments")

_PURCHASE_SQL = (
    "SELECT (r).* FROM (SELECT balance.balance_purchase($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10) r) s"
)
_REFUND_SQL = (
    "SELECT (r).* FROM (SELECT balance.balance_refund($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) r) s"
)
_DISPUTE_SQL = "SELECT (r).* FROM (SELECT balance.balance_dispute($1,$2,$3,$4,$5,$6,$7) r) s"
_RESOLVE_SQL = (
    "SELECT (r).* FROM"
    " (SELECT balance.balance_resolve_review($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) r) s"
)
_UNFULFILLED_SQL = (
    "SELECT balance.balance_record_unfulfilled($1,$2,$3,$4,$5,$6::jsonb,$7,$8,$9,$10,$11)"
)
NOT_POSTED = "BL001"  # schema.sql: a reversal whose ledger row cannot be written


class Fulfilment:
    """Payment events become ledger movements."""

    def __init__(self, ledger: Ledger, catalog: Catalog, refund_policy: str) -> None:
        self._ledger = ledger
        self._catalog = catalog
        self._refund_policy = refund_policy
        self._subscriptions = Subscriptions(ledger, catalog)

    async def fulfil(
        self, provider: str, event_id: str, event_type: str, action: Action, payload: bytes
    ) -> dict[str, Any]:
        """Carry out `action`; the webhook's answer: `{"received": true, "result": ...}`.

        `result` is fulfilled / duplicate / reversed / nothing_to_reverse / dispute_taken /
        dispute_returned / nothing_to_change / pending / ignored / needs_review.
        """
        answer: dict[str, Any] = {"received": True}
        if isinstance(action, Ignore):
            return {**answer, "result": "ignored", "reason": action.reason}
        if isinstance(action, Unfulfilled):
            return {**answer, **await self._unfulfilled(provider, event_id, event_type, action,
                                                        payload)}
        if isinstance(action, SubscriptionPaid | SubscriptionFailed | SubscriptionChanged):
            try:
                return {**answer, **await self._subscriptions.apply(action)}
            except ForReview as exc:
                return {**answer, **await self._unfulfilled(
                    provider, event_id, event_type, Unfulfilled(str(exc), None), payload)}
        if isinstance(action, PaymentFailed):
            await self._ledger.pool.execute(
                "SELECT balance.balance_top_up_failed(NULL, $1, $2, $3::jsonb)", action.payment_id,
                action.error, jsonb({"payment_intent": action.payment_id}))
            return {**answer, "result": "payment_failed"}
        if isinstance(action, Purchase):
            try:
                credits = self._credits(action)
            except Unpriced as exc:
                return {**answer, **await self._unfulfilled(
                    provider, event_id, event_type, _kept(str(exc), action), payload)}
            try:
                body = await self._purchase(action, credits)
            except asyncpg.UniqueViolationError:
                # The key was taken on /credit before the API reserved `webhook:` keys.
                problem = f"idempotency key webhook:{provider}:{action.payment_id} already used"
                return {**answer, **await self._unfulfilled(
                    provider, event_id, event_type, _kept(problem, action), payload)}
            except asyncpg.PostgresError as exc:
                raise _not_posted(exc, provider, event_id) from None
            if body["result"] == "fulfilled":
                metrics.purchases.labels(provider).inc()
                if "credits_reversed" in body:
                    metrics.reversals.labels(provider).inc()
        else:
            try:
                if isinstance(action, Refund):
                    body = await self._refund(action)
                else:
                    body = await self._dispute(action)
            except asyncpg.PostgresError as exc:
                raise _not_posted(exc, provider, event_id) from None
            if body["result"] == "reversed":
                metrics.reversals.labels(provider).inc()
            elif body["result"] in ("dispute_taken", "dispute_returned"):
                metrics.disputes.labels(provider, body["result"]).inc()
        return {**answer, "result": body["result"], "payment_id": action.payment_id,
                **{k: v for k, v in body.items() if k != "result"}}

    async def resolve(self, review_id: int, action: str, note: str, actor: str,
                      fingerprint: bytes, why: str | None, *, credits: int | None = None,
                      account_id: str | None = None) -> Outcome:
        """Resolve a payment under review once, as `actor` (audited in SQL, with `why`):
        credit it as its own event would have (then a redelivery of it is a duplicate) or
        dismiss it. The same request again replays; another on a resolved review is a
        conflict; what the review lacks for a credit (an account, a price, a payment) is a
        422, decided in SQL with the review locked."""
        try:
            row = await self._ledger.move(
                _RESOLVE_SQL, review_id, action, account_id, credits, note, actor, fingerprint,
                self._ledger.welcome, self._refund_policy, why)
        except asyncpg.UniqueViolationError:
            # The payment's key was taken on that account by a /credit before the API
            # reserved `webhook:` keys (the review's own problem, then): nothing was written.
            raise errors.invalid_request(
                "account_id: this payment's key is already used on that account; dismiss the "
                "review and adjust the account, or credit another account") from None
        return self._ledger.outcome(row)

    def _credits(self, p: Purchase) -> int:
        """The credits the money received buys (catalog.credits_for); metadata credits only
        cross-check them."""
        credits = self._catalog.credits_for(p.package, p.amount_paid, p.currency, p.quantity)
        if p.claimed_credits is not None and p.claimed_credits != credits:
            raise Unpriced(f"metadata credits {p.claimed_credits} is not the {credits} credits "
                           f"that {p.amount_paid} {p.currency} buys")
        return credits

    async def _purchase(self, p: Purchase, credits: int) -> dict[str, Any]:
        """Credit a paid purchase once; then apply any refund that arrived before it."""
        metadata = {"provider": p.provider, "payment_id": p.payment_id, "event_id": p.event_id,
                    "amount_paid": p.amount_paid, "currency": p.currency,
                    "package": p.package}
        if p.quantity != 1:
            metadata["quantity"] = p.quantity
        return await self._move(
            _PURCHASE_SQL, p.provider, p.payment_id, p.account_id, credits, p.amount_paid,
            p.currency, p.event_id, jsonb(metadata), self._ledger.welcome, self._refund_policy,
            reason=f"purchase via {p.provider}",
        )

    async def _refund(self, r: Refund) -> dict[str, Any]:
        """Store a refund once and reverse its share of the payment's credits (or wait)."""
        return await self._move(
            _REFUND_SQL, r.provider, r.payment_id, r.refund_key, r.refunded, r.paid,
            r.cumulative, r.full, r.event_id, self._ledger.welcome, self._refund_policy,
            reason=f"refund via {r.provider}",
        )

    async def _dispute(self, d: Dispute) -> dict[str, Any]:
        """Store a dispute's news once and take back or give back its share (or wait)."""
        return await self._move(
            _DISPUTE_SQL, d.provider, d.payment_id, d.dispute_id, d.amount, d.status,
            d.event_id, self._ledger.welcome, reason=f"dispute via {d.provider}",
        )

    async def _move(self, sql: str, *args: Any, reason: str) -> dict[str, Any]:
        """One payments movement through the ledger's door; its answer as a dict."""
        row = await self._ledger.move(sql, *args, reason=reason)
        body: dict[str, Any] = json.loads(row["body"] or "{}")
        return body

    async def _unfulfilled(
        self, provider: str, event_id: str, event_type: str, action: Unfulfilled, payload: bytes
    ) -> dict[str, Any]:
        """Record a paid event that credits nothing for review, once; answered 200, because a
        retry cannot add what it lacks and an error would make the provider redeliver it."""
        text = payload.decode()
        if "\\u0000" in text:
            # jsonb refuses NUL characters; keep the event as one JSON string instead.
            text = json.dumps({"raw": text})
        credits: int | None = None  # the operator states them
        if action.quantity is not None:  # a malformed quantity offers no count at all
            with contextlib.suppress(Unpriced):
                credits = self._catalog.credits_for(action.package, action.amount_paid,
                                                    action.currency, action.quantity)
        state: str = await self._ledger.pool.fetchval(
            _UNFULFILLED_SQL, provider, event_id, event_type, action.payment_id, action.problem,
            text, action.account_id, action.amount_paid, action.currency, action.package,
            credits if action.payment_id is not None else None,
        )
        if state == "fulfilled":  # another event already credited this payment
            return {"result": "duplicate", "payment_id": action.payment_id}
        if state == "recorded":
            log.warning("%s event %s not fulfilled: %s", provider, event_id, action.problem)
        return {"result": "needs_review", "problem": action.problem}


def _kept(problem: str, p: Purchase) -> Unfulfilled:
    """A purchase that cannot be credited as it came, with all it says, for review."""
    return Unfulfilled(problem, p.payment_id, p.account_id, p.package, p.amount_paid,
                       p.currency, p.quantity)


def _not_posted(exc: asyncpg.PostgresError, provider: str, event_id: str) -> Exception:
    """A reversal that cannot be posted (BL001) as a 500 the provider retries; any other
    database error as itself."""
    if exc.sqlstate != NOT_POSTED:
        return exc
    log.error("%s event %s: %s", provider, event_id, exc)
    return errors.internal_error(
        f"a reversal could not be posted ({exc}); nothing was written, "
        "and the provider will deliver the event again")
