"""Dodo Payments events (Standard Webhooks): payments, refunds, disputes, and the
subscription events that drive a subscription's plan.

Dodo's amounts are read into ISO 4217 minor units through server/currencies.py's DODO table
(the same units, for every currency Dodo takes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from server.currencies import DODO, Unrepresentable
from server.payments.events import (
    Action,
    Dispute,
    Ignore,
    Refund,
    SubscriptionChanged,
    SubscriptionFailed,
    SubscriptionPaid,
    Unfulfilled,
    account_in,
    currency_code,
    iso_time,
    object_id,
    provider_money,
    purchase_from_metadata,
)


class DodoEvent(msgspec.Struct):
    """The envelope of a Dodo event; its id is the `webhook-id` header."""

    type: str
    data: dict[str, Any]
    timestamp: str | None = None  # when Dodo made the event: the order of a subscription's news


_DISPUTE_STATUS = {"dispute.opened": "open", "dispute.won": "won", "dispute.lost": "lost"}
_ACCOUNT_KEYS = ("account_id", "user_id")
_PAID = ("subscription.active", "subscription.renewed")  # a period paid: its allowance
_FAILED = ("subscription.on_hold", "subscription.past_due", "subscription.failed")
_STATE = ("subscription.updated", "subscription.plan_changed", "subscription.cancelled",
          "subscription.expired", "subscription.paused", "subscription.unpaused")
# Dodo's subscription statuses, as the plan sees them (pending: not paid yet, so the plan
# waits for its first paid period).
_STATUS = {"active": "active", "pending": "active", "on_hold": "past_due",
           "past_due": "past_due", "paused": "past_due", "cancelled": "canceled",
           "expired": "canceled", "failed": "canceled"}


def parse_dodo(event: DodoEvent, event_id: str) -> Action:
    """What a Dodo event asks of the ledger (amounts in ISO 4217 minor units)."""
    try:
        return _parse(event, event_id)
    except Unrepresentable as exc:  # a currency Dodo does not take
        purchase = event.type == "payment.succeeded"
        return Unfulfilled(str(exc), object_id(event.data, "payment_id", "data")
                           if purchase else None)


def _amount(data: dict[str, Any], field: str, *, up: bool = False) -> int | None:
    return provider_money(DODO, data.get(field), currency_code(data.get("currency")), up=up)


def _parse(event: DodoEvent, event_id: str) -> Action:
    data = event.data
    metadata = data.get("metadata")
    if event.type == "payment.succeeded" and (
            data.get("subscription_id") or data.get("subscription_ids")
            or (isinstance(metadata, dict) and metadata.get("plan"))):
        # Its subscription.active / renewed grants the period: crediting the money too would
        # sell it twice.
        return Ignore("a subscription's payment pays its plan, not credits")
    if event.type in _PAID or event.type in _FAILED or event.type in _STATE:
        return _subscription(event, data)
    if event.type == "payment.succeeded":
        payment_id = object_id(data, "payment_id", "data")
        return purchase_from_metadata(
            "dodo", payment_id, data.get("metadata"), event_id,
            account_keys=("account_id", "user_id"), credit_keys=("credits", "credit_amount"),
            amount=_amount(data, "total_amount"), currency=currency_code(data.get("currency")),
        )
    if event.type == "refund.succeeded":
        payment_id = object_id(data, "payment_id", "data")
        refund_id = object_id(data, "refund_id", "data")
        amount = _amount(data, "amount", up=True)
        full = data.get("is_partial") is False
        if amount is None and not full:
            return Unfulfilled(f"partial refund {refund_id} of {payment_id} has no amount", None)
        return Refund("dodo", payment_id, refund_id, amount, None,
                      cumulative=False, full=full, event_id=event_id)
    if event.type in _DISPUTE_STATUS:
        return Dispute("dodo", object_id(data, "payment_id", "data"),
                       object_id(data, "dispute_id", "data"), _amount(data, "amount", up=True),
                       _DISPUTE_STATUS[event.type], event_id)
    return Ignore(f"event type {event.type!r} is not handled")


def _subscription(event: DodoEvent, data: dict[str, Any]) -> Action:
    """A subscription's paid period, failed renewal or new state."""
    subscription = object_id(data, "subscription_id", "data")
    account = account_in(data.get("metadata"), _ACCOUNT_KEYS)
    at = iso_time(event.timestamp, "timestamp") if event.timestamp else datetime.now(UTC)
    product = data.get("product_id") if isinstance(data.get("product_id"), str) else None
    if event.type in _PAID:
        if product is None:
            return Ignore("subscription without product_id")
        start = iso_time(data.get("previous_billing_date"), "data.previous_billing_date")
        end = iso_time(data.get("next_billing_date"), "data.next_billing_date")
        payment = data.get("payment_id")
        # subscription.active names no payment: the period itself is the key.
        payment_id = payment if isinstance(payment, str) and payment else (
            f"{subscription}@{start.isoformat()}")
        return SubscriptionPaid("dodo", subscription, account, product, start, end,
                                payment_id, at)
    if event.type in _FAILED:
        return SubscriptionFailed("dodo", subscription, account, None,
                                  event.type.removeprefix("subscription."), at)
    status = _STATUS.get(str(data.get("status")))
    if status is None:
        return Ignore(f"subscription status {data.get('status')!r} is not handled")
    cancel_at = None
    if data.get("cancel_at_next_billing_date") is True and status != "canceled":
        cancel_at = iso_time(data.get("next_billing_date"), "data.next_billing_date")
    return SubscriptionChanged("dodo", subscription, account, status, product, cancel_at,
                               None, at, f"dodo {event.type} ({data.get('status')})")
