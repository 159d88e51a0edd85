"""Stripe events: Checkout and PaymentIntent purchases, charge refunds, disputes.

Stripe's amounts are in its own minor units (ISK in hundredths, MGA whole): each is read
into ISO 4217's through server/currencies.py's STRIPE table before anything uses it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from server.currencies import STRIPE, Unrepresentable
from server.payments.events import (
    Action,
    Dispute,
    Ignore,
    PaymentFailed,
    Refund,
    Unfulfilled,
    currency_code,
    money,
    object_id,
    optional_id,
    provider_money,
    purchase_from_metadata,
)


class _StripeData(msgspec.Struct):
    object: dict[str, Any]


class StripeEvent(msgspec.Struct):
    """The envelope of a Stripe event; `data.object` is read field by field."""

    id: str
    type: str
    data: _StripeData



_PAID_SESSION = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


def parse_stripe(event: StripeEvent) -> Action:
    """What a Stripe event asks of the ledger (amounts in ISO 4217 minor units)."""
    try:
        return _parse(event)
    except Unrepresentable as exc:  # a currency Stripe documents no units for
        obj = event.data.object
        purchase = event.type in _PAID_SESSION or event.type == "payment_intent.succeeded"
        payment_id = (optional_id(obj, "payment_intent", "data.object")
                      or object_id(obj, "id", "data.object")) if purchase else None
        return Unfulfilled(str(exc), payment_id)


def _amount(obj: dict[str, Any], field: str, *, up: bool = False) -> int | None:
    return provider_money(STRIPE, obj.get(field), currency_code(obj.get("currency")), up=up)


def _parse(event: StripeEvent) -> Action:
    obj = event.data.object
    if event.type in _PAID_SESSION:
        if obj.get("payment_status") != "paid":
            return Ignore("checkout session is not paid (yet)")
        if obj.get("mode", "payment") != "payment":
            return Ignore("only one-time payments buy credits")
        # The PaymentIntent id is shared with payment_intent.succeeded and charge.refunded.
        payment_id = optional_id(obj, "payment_intent", "data.object") or object_id(
            obj, "id", "data.object")
        return purchase_from_metadata(
            "stripe", payment_id, obj.get("metadata"), event.id,
            account_keys=("account_id",), credit_keys=("credits",),
            amount=_amount(obj, "amount_total"), currency=currency_code(obj.get("currency")),
        )
    if event.type == "payment_intent.succeeded":
        payment_id = object_id(obj, "id", "data.object")
        amount = _amount(obj, "amount_received") or _amount(obj, "amount")
        return purchase_from_metadata(
            "stripe", payment_id, obj.get("metadata"), event.id,
            account_keys=("account_id",), credit_keys=("credits",),
            amount=amount, currency=currency_code(obj.get("currency")),
        )
    if event.type == "payment_intent.payment_failed":
        error = obj.get("last_payment_error") or {}
        code = error.get("decline_code") or error.get("code") if isinstance(error, dict) else None
        return PaymentFailed(object_id(obj, "id", "data.object"), str(code or "payment_failed"))
    if event.type == "charge.refunded":
        charge_id = object_id(obj, "id", "data.object")
        payment_id = optional_id(obj, "payment_intent", "data.object") or charge_id
        refunded = _amount(obj, "amount_refunded", up=True)
        paid = _amount(obj, "amount_captured") or _amount(obj, "amount")
        full = obj.get("refunded") is True
        if refunded is None and not full:
            return Unfulfilled(f"charge {charge_id} refunded without amount_refunded", None)
        # amount_refunded is the charge's running total: one row per total seen (keyed by
        # the total as Stripe wrote it).
        return Refund("stripe", payment_id, f"{charge_id}@{money(obj.get('amount_refunded'))}",
                      refunded, paid, cumulative=True, full=full, event_id=event.id)
    if event.type in ("charge.dispute.created", "charge.dispute.closed"):
        dispute_id = object_id(obj, "id", "data.object")
        payment_id = optional_id(obj, "payment_intent", "data.object") or object_id(
            obj, "charge", "data.object")
        status = "open"
        if event.type == "charge.dispute.closed":
            # An inquiry closed without a chargeback (warning_closed) took nothing either.
            closed = obj.get("status")
            if closed not in ("won", "lost", "warning_closed"):
                return Ignore(f"dispute closed as {closed!r}")
            status = "lost" if closed == "lost" else "won"
        return Dispute("stripe", payment_id, dispute_id, _amount(obj, "amount", up=True),
                       status, event.id)
    return Ignore(f"event type {event.type!r} is not handled")
