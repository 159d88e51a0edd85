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
             "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) r")
_FAILED_SQL = "SELECT (r).* FROM balance.balance_subscription_failed($1,$2,$3,$4,$5,$6,$7) r"
_STATE_SQL = ("SELECT (r).* FROM balance.balance_subscription_state"
              "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) r")

Event = SubscriptionPaid | SubscriptionFailed | SubscriptionChanged


class NoAccount(Exception):
    """A paid period of one of our plans whose subscription names no account, and that was
    never seen with one: for review."""


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
                plan, event.period_start, event.period_end, event.payment_id, event.customer,
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
                event.status, plan, event.cancel_at, event.customer, event.event_at,
                event.cause, reason=event.cause)
            if event.card is not None and rows:
                account = json.loads(rows[-1]["body"]).get("account_id")
                if account is not None:
                    await self.save_card(account, event.card)
        answer: dict[str, Any] = json.loads(rows[-1]["body"])
        if answer["result"] == "no_account":
            raise NoAccount(f"subscription {event.subscription_id} names no account: its "
                            "metadata has no account_id")
        return answer

    async def save_card(self, account_id: str, card: tuple[str, str]) -> None:
        """Keep the (Stripe customer, payment method) a checkout saved, for auto top-up."""
        await self._ledger.pool.execute("SELECT balance.balance_save_card($1, $2, $3)",
                                        account_id, *card)
