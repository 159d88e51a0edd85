"""Dodo Payments events (Standard Webhooks): payments, refunds and disputes.

Dodo's amounts are read into ISO 4217 minor units through server/currencies.py's DODO table
(the same units, for every currency Dodo takes).
"""

from __future__ import annotations

from typing import Any

import msgspec

from server.currencies import DODO, Unrepresentable
from server.payments.events import (
    Action,
    Dispute,
    Ignore,
    Refund,
    Unfulfilled,
    currency_code,
    object_id,
    provider_money,
    purchase_from_metadata,
)


class DodoEvent(msgspec.Struct):
    """The envelope of a Dodo event; its id is the `webhook-id` header."""

    type: str
    data: dict[str, Any]



_DISPUTE_STATUS = {"dispute.opened": "open", "dispute.won": "won", "dispute.lost": "lost"}


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
