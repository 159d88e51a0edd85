"""Subscriptions: a provider's subscription events drive the catalog plan it sells.

A plan that names its provider product (`stripe_price`, `dodo_product`) follows the
subscription: each paid period grants that period's allowance once, a failed renewal puts it
past due, a cancellation ends it, a change of price changes the plan (README "Plans"). The
rules are in schema.sql ("subscriptions"), under the account's row lock, so redeliveries and
events in any order come out the same; this module names the plan and carries the rows
through the ledger's one door, so every change is pushed.
"""

from __future__ import annotations

import json
from typing import Any

from server.catalog import Catalog
from server.ledger import Ledger
from server.payments.events import SubscriptionChanged, SubscriptionFailed, SubscriptionPaid

_PAID_SQL = ("SELECT (r).* FROM balance.balance_subscription_paid"
             "($1,$2,$3,$4,$5,$6,$7,$8,$9) r")
_FAILED_SQL = "SELECT (r).* FROM balance.balance_subscription_failed($1,$2,$3,$4,$5,$6,$7) r"
_STATE_SQL = ("SELECT (r).* FROM balance.balance_subscription_state"
              "($1,$2,$3,$4,$5,$6,$7,$8,$9) r")

Event = SubscriptionPaid | SubscriptionFailed | SubscriptionChanged


class ForReview(Exception):
    """A paid period that grants nothing: its subscription names no account (and was never
    seen with one), it ended, or the period has passed. The money was received, so an
    operator is told (the review queue), not only the webhook's answer."""


# What balance_subscription_paid answers for money it could not turn into a plan.
_REVIEW = {
    "no_account": "subscription {sub} names no account: its metadata has no account_id",
    "subscription_ended": "subscription {sub} was paid after it ended (or was superseded by "
                          "another on its account); refund it, or credit the account",
    "stale": "subscription {sub} was paid for a period that has ended or was followed by a "
             "newer one",
}


class Subscriptions:
    """Subscription events become plan changes."""

    def __init__(self, ledger: Ledger, catalog: Catalog) -> None:
        self._ledger = ledger
        self._catalog = catalog

    async def apply(self, event: Event) -> dict[str, Any]:
        """Carry out one subscription event; the webhook's answer (`result`: started /
        renewed / duplicate / stale / past_due / plan_changed / updated / canceled /
        nothing_to_change / subscription_ended / ignored)."""
        welcome = self._ledger.welcome
        if isinstance(event, SubscriptionPaid):
            plan = self._catalog.plan_for(event.provider, event.product)
            if plan is None:
                return {"result": "ignored",
                        "reason": f"{event.product} is no catalog plan's {event.provider} product"}
            rows = await self._ledger.move_many(
                _PAID_SQL, event.provider, event.subscription_id, event.account_id, welcome,
                plan, event.period_start, event.period_end, event.payment_id,
                event.event_at, reason=f"plan {plan} paid via {event.provider}")
        elif isinstance(event, SubscriptionFailed):
            rows = await self._ledger.move_many(
                _FAILED_SQL, event.provider, event.subscription_id, event.account_id, welcome,
                event.payment_id, event.error, event.event_at,
                reason=f"plan past due: {event.error}")
        else:
            plan = self._catalog.plan_for(event.provider, event.product)
            rows = await self._ledger.move_many(
                _STATE_SQL, event.provider, event.subscription_id, event.account_id, welcome,
                event.status, plan, event.cancel_at, event.event_at,
                event.cause, reason=event.cause)
        answer: dict[str, Any] = json.loads(rows[-1]["body"])
        if isinstance(event, SubscriptionChanged) and event.card is not None \
                and answer["result"] not in ("nothing_to_change", "ignored"):
            await self.save_card(answer["account_id"], event.card)  # news of now, applied
        if answer["result"] in _REVIEW:
            raise ForReview(_REVIEW[answer["result"]].format(sub=event.subscription_id))
        return answer

    async def save_card(self, account_id: str, card: tuple[str, str]) -> None:
        """Keep the (Stripe customer, payment method) a checkout saved, for auto top-up."""
        await self._ledger.pool.execute("SELECT balance.balance_save_card($1, $2, $3)",
                                        account_id, *card)
