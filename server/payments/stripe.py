"""Stripe events: Checkout and PaymentIntent purchases, charge refunds, disputes, and the
invoices and subscription changes that drive a subscription's plan.

Stripe's amounts are in its own minor units (ISK in hundredths, MGA whole): each is read
into ISO 4217's through server/currencies.py's STRIPE table before anything uses it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from server.currencies import STRIPE, Unrepresentable
from server.payments.events import (
    Action,
    Dispute,
    Ignore,
    PaymentFailed,
    Refund,
    SubscriptionChanged,
    SubscriptionFailed,
    SubscriptionPaid,
    Unfulfilled,
    account_in,
    currency_code,
    money,
    object_id,
    optional_id,
    provider_money,
    purchase_from_metadata,
    unix_time,
)


class _StripeData(msgspec.Struct):
    object: dict[str, Any]


class StripeEvent(msgspec.Struct):
    """The envelope of a Stripe event; `data.object` is read field by field."""

    id: str
    type: str
    data: _StripeData
    created: int | None = None  # when Stripe made the event: the order of a subscription's news


_PAID_SESSION = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
_PAID_INVOICE = ("invoice.paid", "invoice.payment_succeeded")  # both come: one grant (the period)
# The invoices that pay a period: the first and each renewal. A proration (subscription_update)
# grants nothing: the plan change it bills is applied from the subscription's own event.
_PERIOD_REASONS = ("subscription_create", "subscription_cycle")
_SUBSCRIPTION_EVENTS = ("customer.subscription.created", "customer.subscription.updated",
                        "customer.subscription.deleted", "customer.subscription.paused",
                        "customer.subscription.resumed")
# Stripe's subscription statuses, as the plan sees them. incomplete: not paid yet (the plan
# starts with the first paid invoice); paused and unpaid collect nothing, as past_due.
_STATUS = {"active": "active", "trialing": "active", "incomplete": "active",
           "past_due": "past_due", "unpaid": "past_due", "paused": "past_due",
           "canceled": "canceled", "incomplete_expired": "canceled"}
# What the server itself puts on the payments it makes (checkout, auto top-up): a
# PaymentIntent with none of them is not ours to credit (a subscription invoice's payment).
_OUR_METADATA = ("account_id", "package", "credits", "auto_top_up")


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
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict) or not any(metadata.get(k) for k in _OUR_METADATA):
            # An invoice's payment carries no metadata of ours: its invoice.paid drives the
            # subscription's plan, and crediting it here would sell the period twice.
            return Ignore("payment intent without account_id metadata (a subscription "
                          "invoice's payment, or not one of ours)")
        amount = _amount(obj, "amount_received") or _amount(obj, "amount")
        return purchase_from_metadata(
            "stripe", payment_id, metadata, event.id,
            account_keys=("account_id",), credit_keys=("credits",),
            amount=amount, currency=currency_code(obj.get("currency")),
        )
    if event.type in _PAID_INVOICE or event.type == "invoice.payment_failed":
        return _invoice(event)
    if event.type in _SUBSCRIPTION_EVENTS:
        return _subscription(event)
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


def _event_at(event: StripeEvent) -> datetime:
    """When Stripe made the event (now, for an envelope without `created`)."""
    return unix_time(event.created, "created") if event.created else datetime.now(UTC)


def _invoice_subscription(invoice: dict[str, Any]) -> tuple[str | None, Any]:
    """(subscription id, its metadata as the invoice snapshot it) of an invoice: under
    `parent.subscription_details` since API 2025-03-31, top level before."""
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    if isinstance(details, dict) and details.get("subscription"):
        return object_id(details, "subscription", "data.object.parent.subscription_details"), \
            details.get("metadata")
    legacy = invoice.get("subscription_details")
    return (optional_id(invoice, "subscription", "data.object"),
            legacy.get("metadata") if isinstance(legacy, dict) else None)


def _period_line(invoice: dict[str, Any]) -> tuple[str, datetime, datetime] | None:
    """(price id, period start, period end) of the invoice's first subscription line that is
    not a proration."""
    lines = invoice.get("lines")
    data = lines.get("data") if isinstance(lines, dict) else None
    for line in data if isinstance(data, list) else []:
        if not isinstance(line, dict) or _proration(line):
            continue
        pricing = line.get("pricing")
        details = pricing.get("price_details") if isinstance(pricing, dict) else None
        price = (details.get("price") if isinstance(details, dict) else None) or line.get("price")
        if isinstance(price, dict):
            price = price.get("id")
        period = line.get("period")
        if isinstance(price, str) and isinstance(period, dict):
            return (price, unix_time(period.get("start"), "lines.data[].period.start"),
                    unix_time(period.get("end"), "lines.data[].period.end"))
    return None


def _proration(line: dict[str, Any]) -> bool:
    """Whether an invoice line bills a proration: `parent.subscription_item_details.proration`
    since API 2025-03-31, `proration` before."""
    parent = line.get("parent")
    details = parent.get("subscription_item_details") if isinstance(parent, dict) else None
    return bool(line.get("proration") or (isinstance(details, dict) and details.get("proration")))


def _invoice(event: StripeEvent) -> Action:
    """A subscription's invoice paid (a period's allowance) or failed (past due)."""
    invoice = event.data.object
    subscription, metadata = _invoice_subscription(invoice)
    if subscription is None:
        return Ignore("an invoice of no subscription")
    reason = invoice.get("billing_reason")
    if event.type == "invoice.payment_failed":
        attempts = invoice.get("attempt_count")
        return SubscriptionFailed(
            "stripe", subscription, account_in(metadata, ("account_id",)),
            object_id(invoice, "id", "data.object"),
            f"invoice payment failed (attempt {attempts})" if type(attempts) is int
            else "invoice payment failed", _event_at(event))
    if reason not in _PERIOD_REASONS:
        return Ignore(f"invoice for {reason!r} pays no period (a plan change is applied from "
                      "the subscription's own event)")
    line = _period_line(invoice)
    if line is None:
        return Ignore("invoice without a subscription line")
    price, start, end = line
    return SubscriptionPaid("stripe", subscription, account_in(metadata, ("account_id",)),
                            price, start, end, object_id(invoice, "id", "data.object"),
                            _event_at(event))


def _subscription(event: StripeEvent) -> Action:
    """A subscription's state: its status, its price (the plan), a cancellation's date."""
    sub = event.data.object
    status = "canceled" if event.type == "customer.subscription.deleted" else _STATUS.get(
        str(sub.get("status")))
    if status is None:
        return Ignore(f"subscription status {sub.get('status')!r} is not handled")
    items = sub.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    item: dict[str, Any] = data[0] if isinstance(data, list) and data and isinstance(
        data[0], dict) else {}
    price = item.get("price")
    product = price.get("id") if isinstance(price, dict) else price
    cancel_at = sub.get("cancel_at")
    if not cancel_at and sub.get("cancel_at_period_end"):
        # current_period_end moved to the item in API 2025-03-31.
        cancel_at = item.get("current_period_end") or sub.get("current_period_end")
    customer = optional_id(sub, "customer", "data.object")
    method = optional_id(sub, "default_payment_method", "data.object")
    return SubscriptionChanged(
        "stripe", object_id(sub, "id", "data.object"),
        account_in(sub.get("metadata"), ("account_id",)), status,
        product if isinstance(product, str) else None,
        unix_time(cancel_at, "data.object.cancel_at") if cancel_at else None,
        (customer, method) if customer and method else None, _event_at(event),
        f"stripe {event.type} ({sub.get('status')})")
