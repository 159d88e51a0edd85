"""Payment webhooks: signed Stripe and Dodo events become purchases and reversals.

`POST /v1/webhooks/stripe` checks `Stripe-Signature`; `POST /v1/webhooks/dodo` checks the
Standard Webhooks headers. Both verify the raw body before reading it, and answer:

- 404 `not_found` when the provider's secret is not configured: unsigned events are never
  accepted, and the route does not advertise itself.
- 401 `unauthorized` for a missing, malformed, wrong or stale (over 300 s either way)
  signature. Nothing is written.
- 400 `invalid_json` / 422 `invalid_request` for a correctly signed body that is not an
  event we can read; 413 over 64 KiB.
- 200 `{"received": true, "result": ...}` otherwise, with result one of
  `fulfilled` (credits added), `duplicate` (this payment or refund was already applied:
  a redelivery, or the same payment under another event), `reversed`, `nothing_to_reverse`,
  `pending` (a refund whose payment has not arrived; applied when it does), `ignored`
  (an event type or state that buys nothing), or `recorded_not_fulfilled`.

`recorded_not_fulfilled` is the answer to a paid event whose metadata lacks a valid
account or credits: the event is kept in `webhook_events_unfulfilled` for an operator and
answered 200, because a retry cannot add the metadata and a 4xx or 5xx would only make
the provider redeliver it for days.

Exactly once: a purchase is keyed by the provider's payment id (Stripe PaymentIntent,
Dodo payment_id), not by the event or delivery id, so a Checkout session and its
PaymentIntent credit once. The dedupe record and the ledger row commit in one transaction
(schema.sql, `balance_purchase` / `balance_refund`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import api, errors, metrics
from server.messages import BalanceFrame, decode_body, encoder
from server.payments import Payments, Purchase, Refund

if TYPE_CHECKING:
    from server.app import Resources

log = logging.getLogger("balance.webhooks")

TOLERANCE_SECONDS = 300
MAX_CREDITS = 10**12
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_ID_RE = re.compile(r"[\x21-\x7e]{1,200}")  # provider ids: printable ASCII, no spaces
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_CREDITS_RE = re.compile(r"[0-9]{1,13}")


# ---------------------------------------------------------------- signatures


class SignatureError(Exception):
    """The webhook's signature is missing, malformed, wrong or outside the tolerance."""


def _check_time(timestamp: str, now: float) -> None:
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise SignatureError(f"timestamp is more than {TOLERANCE_SECONDS} s from now")


def stripe_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe sends for this body, secret and time."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_stripe(payload: bytes, header: str | None, secret: str, now: float) -> None:
    """Accept if any `v1=` entry is the HMAC-SHA256 of `t.payload` and `t` is recent."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed Stripe-Signature header")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value.encode("latin-1"))
    if len(timestamps) != 1 or not _TIMESTAMP_RE.fullmatch(timestamps[0]):
        raise SignatureError("Stripe-Signature needs exactly one numeric t=")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1= signature")
    expected = hmac.new(
        secret.encode(), timestamps[0].encode() + b"." + payload, hashlib.sha256
    ).hexdigest().encode()
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise SignatureError("no Stripe-Signature v1= entry matches")
    _check_time(timestamps[0], now)


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` + base64); ValueError if bad."""
    raw = secret.removeprefix("whsec_").rstrip("=")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("the Standard Webhooks secret is empty")
    return key


def standard_signature(payload: bytes, key: bytes, msg_id: str, timestamp: int) -> str:
    """One `webhook-signature` entry (`v1,<base64>`) for this message."""
    signed = msg_id.encode("latin-1") + f".{timestamp}.".encode() + payload
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify_standard(
    payload: bytes, msg_id: str | None, timestamp: str | None, signature: str | None,
    key: bytes, now: float,
) -> None:
    """Accept if any space-separated `v1,` entry signs `id.timestamp.payload` and it is recent."""
    if not (msg_id and timestamp and signature):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise SignatureError("webhook-timestamp is not a Unix time in seconds")
    signed = msg_id.encode("latin-1") + f".{timestamp}.".encode() + payload
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    matched = False
    for entry in signature.split(" "):
        version, sep, value = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            candidate = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no webhook-signature v1 entry matches")
    _check_time(timestamp, now)


# ---------------------------------------------------------------- events


class _StripeData(msgspec.Struct):
    object: dict[str, Any]


class StripeEvent(msgspec.Struct):
    """The envelope of a Stripe event; `data.object` is read field by field."""

    id: str
    type: str
    data: _StripeData


class DodoEvent(msgspec.Struct):
    """The envelope of a Dodo event; its id is the `webhook-id` header."""

    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Unfulfilled:
    """A paid event we cannot act on; payment_id is set for purchases only."""

    problem: str
    payment_id: str | None


Action = Purchase | Refund | Ignore | Unfulfilled


def _id(obj: dict[str, Any], field: str, where: str) -> str:
    value = obj.get(field)
    if isinstance(value, dict):  # an expanded object
        value = value.get("id")
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise errors.invalid_request(f"{where}.{field}: missing or not an id")
    return value


def _optional_id(obj: dict[str, Any], field: str, where: str) -> str | None:
    return None if obj.get(field) is None else _id(obj, field, where)


def _money(value: Any) -> int | None:
    """A non-negative integer amount in minor units, or None."""
    return value if type(value) is int and 0 <= value <= 10**15 else None


def _text(value: Any) -> str | None:
    return value[:16] if isinstance(value, str) else None


def parse_credits(value: Any) -> int | None:
    """Credits from metadata: a string of digits, 1 … 10^12; anything else is None."""
    if not isinstance(value, str) or not _CREDITS_RE.fullmatch(value):
        return None
    credits = int(value)
    return credits if 1 <= credits <= MAX_CREDITS else None


def _purchase(
    provider: str, payment_id: str, metadata: Any, event_id: str, *,
    account_keys: tuple[str, ...], credit_keys: tuple[str, ...],
    amount: int | None, currency: str | None,
) -> Purchase | Unfulfilled:
    md: dict[str, Any] = metadata if isinstance(metadata, dict) else {}
    account = next((md[k] for k in account_keys if md.get(k) not in (None, "")), None)
    raw_credits = next((md[k] for k in credit_keys if md.get(k) not in (None, "")), None)
    problems: list[str] = []
    if account is None:
        problems.append(f"metadata {' or '.join(account_keys)} is missing")
    elif not isinstance(account, str) or not _ACCOUNT_RE.fullmatch(account):
        problems.append(
            f"metadata {account_keys[0]} is not an account id (1-128 of A-Za-z0-9_.:@-)")
    credits = parse_credits(raw_credits)
    if raw_credits is None:
        problems.append(f"metadata {' or '.join(credit_keys)} is missing")
    elif credits is None:
        problems.append(f"metadata {credit_keys[0]} is not a whole number 1..10^12")
    if problems or credits is None or not isinstance(account, str):
        return Unfulfilled("; ".join(problems), payment_id)
    return Purchase(provider, payment_id, account, credits, amount, currency, event_id)


_STRIPE_PAID_SESSION = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


def parse_stripe(event: StripeEvent) -> Action:
    """What a Stripe event asks of the ledger."""
    obj = event.data.object
    if event.type in _STRIPE_PAID_SESSION:
        if obj.get("payment_status") != "paid":
            return Ignore("checkout session is not paid (yet)")
        if obj.get("mode", "payment") != "payment":
            return Ignore("only one-time payments buy credits")
        # The PaymentIntent id is shared with payment_intent.succeeded and charge.refunded.
        payment_id = _optional_id(obj, "payment_intent", "data.object") or _id(
            obj, "id", "data.object")
        return _purchase(
            "stripe", payment_id, obj.get("metadata"), event.id,
            account_keys=("account_id",), credit_keys=("credits",),
            amount=_money(obj.get("amount_total")), currency=_text(obj.get("currency")),
        )
    if event.type == "payment_intent.succeeded":
        payment_id = _id(obj, "id", "data.object")
        amount = _money(obj.get("amount_received")) or _money(obj.get("amount"))
        return _purchase(
            "stripe", payment_id, obj.get("metadata"), event.id,
            account_keys=("account_id",), credit_keys=("credits",),
            amount=amount, currency=_text(obj.get("currency")),
        )
    if event.type == "charge.refunded":
        charge_id = _id(obj, "id", "data.object")
        payment_id = _optional_id(obj, "payment_intent", "data.object") or charge_id
        refunded = _money(obj.get("amount_refunded"))
        paid = _money(obj.get("amount_captured")) or _money(obj.get("amount"))
        full = obj.get("refunded") is True
        if refunded is None and not full:
            return Unfulfilled(f"charge {charge_id} refunded without amount_refunded", None)
        # amount_refunded is the charge's running total: one row per total seen.
        return Refund("stripe", payment_id, f"{charge_id}@{refunded}", refunded, paid,
                      cumulative=True, full=full, event_id=event.id)
    return Ignore(f"event type {event.type!r} is not handled")


def parse_dodo(event: DodoEvent, event_id: str) -> Action:
    """What a Dodo event asks of the ledger."""
    data = event.data
    if event.type == "payment.succeeded":
        payment_id = _id(data, "payment_id", "data")
        return _purchase(
            "dodo", payment_id, data.get("metadata"), event_id,
            account_keys=("account_id", "user_id"), credit_keys=("credits", "credit_amount"),
            amount=_money(data.get("total_amount")), currency=_text(data.get("currency")),
        )
    if event.type == "refund.succeeded":
        payment_id = _id(data, "payment_id", "data")
        refund_id = _id(data, "refund_id", "data")
        amount = _money(data.get("amount"))
        full = data.get("is_partial") is False
        if amount is None and not full:
            return Unfulfilled(f"partial refund {refund_id} of {payment_id} has no amount", None)
        return Refund("dodo", payment_id, refund_id, amount, None,
                      cumulative=False, full=full, event_id=event_id)
    return Ignore(f"event type {event.type!r} is not handled")


# ---------------------------------------------------------------- fulfilment


async def _fulfil(
    res: Resources, provider: str, event_id: str, event_type: str, action: Action,
    payload: bytes,
) -> tuple[dict[str, Any], BalanceFrame | None]:
    answer: dict[str, Any] = {"received": True}
    payments = Payments(res.pool, res.settings.welcome_credits)
    mode = res.settings.refund_policy
    if isinstance(action, Ignore):
        return {**answer, "result": "ignored", "reason": action.reason}, None
    if isinstance(action, Unfulfilled):
        state = await payments.record_unfulfilled(
            provider, event_id, event_type, action.payment_id, action.problem, payload)
        if state == "fulfilled":
            return {**answer, "result": "duplicate", "payment_id": action.payment_id}, None
        if state == "recorded":
            log.warning("%s event %s not fulfilled: %s", provider, event_id, action.problem)
        return {**answer, "result": "recorded_not_fulfilled", "problem": action.problem}, None
    if isinstance(action, Purchase):
        try:
            outcome = await payments.purchase(action, mode)
        except asyncpg.UniqueViolationError:
            # The app itself used our idempotency key shape on /credit for this account.
            problem = f"idempotency key webhook:{provider}:{action.payment_id} already used"
            return await _fulfil(res, provider, event_id, event_type,
                                 Unfulfilled(problem, action.payment_id), payload)
        if outcome.result == "fulfilled":
            metrics.purchases.labels(provider).inc()
            if "credits_reversed" in outcome.body:
                metrics.reversals.labels(provider).inc()
    else:
        outcome = await payments.refund(action, mode)
        if outcome.result == "reversed":
            metrics.reversals.labels(provider).inc()
    body = {**answer, "result": outcome.result, "payment_id": action.payment_id,
            **{k: v for k, v in outcome.body.items() if k != "result"}}
    return body, outcome.frame


def _rejected(provider: str, exc: SignatureError) -> errors.ApiError:
    metrics.signatures_rejected.labels(provider).inc()
    return errors.unauthorized(f"webhook signature refused: {exc}")


async def _stripe(
    res: Resources, payload: bytes, header: str | None
) -> tuple[dict[str, Any], BalanceFrame | None]:
    secret = res.settings.stripe_webhook_secret
    assert secret
    try:
        verify_stripe(payload, header, secret, time.time())
    except SignatureError as exc:
        raise _rejected("stripe", exc) from None
    event = decode_body(StripeEvent, payload)
    if not _ID_RE.fullmatch(event.id):
        raise errors.invalid_request("id: not an event id")
    return await _fulfil(res, "stripe", event.id, event.type, parse_stripe(event), payload)


def _no_route() -> errors.ApiError:
    return errors.not_found("no such route")


async def stripe_webhook(request: Request) -> Response:
    """Stripe events: Checkout / PaymentIntent purchases and charge refunds."""
    res = api.resources(request)
    if not res.settings.stripe_webhook_secret:
        raise _no_route()
    payload = await api.read_body(request)
    body, frame = await _stripe(res, payload, request.headers.get("stripe-signature"))
    if frame is not None:
        res.hub.publish(frame)
    return api.json_response(encoder.encode(body))


async def dodo_webhook(request: Request) -> Response:
    """Dodo Payments events (Standard Webhooks): payment.succeeded, refund.succeeded."""
    res = api.resources(request)
    secret = res.settings.dodo_webhook_secret
    if not secret:
        raise _no_route()
    payload = await api.read_body(request)
    headers = request.headers
    msg_id = headers.get("webhook-id")
    try:
        try:
            key = standard_key(secret)
        except ValueError as exc:
            log.error("BALANCE_DODO_WEBHOOK_SECRET is unusable: %s", exc)
            raise SignatureError("the server's Dodo secret is misconfigured") from None
        verify_standard(payload, msg_id, headers.get("webhook-timestamp"),
                        headers.get("webhook-signature"), key, time.time())
    except SignatureError as exc:
        raise _rejected("dodo", exc) from None
    assert msg_id is not None
    if not _ID_RE.fullmatch(msg_id):
        raise errors.invalid_request("webhook-id: not an id")
    event = decode_body(DodoEvent, payload)
    body, frame = await _fulfil(res, "dodo", msg_id, event.type, parse_dodo(event, msg_id),
                                payload)
    if frame is not None:
        res.hub.publish(frame)
    return api.json_response(encoder.encode(body))


async def simulate_purchase(request: Request, account_id: str, credits: int) -> bytes:
    """Buy credits in `dev`: a Stripe-signed checkout.session.completed through the real path.

    Returns the account JSON after the credit.
    """
    res = api.resources(request)
    secret = res.settings.stripe_webhook_secret
    if not secret:
        raise errors.not_found("BALANCE_STRIPE_WEBHOOK_SECRET is not set")
    now = int(time.time())
    token = secrets.token_hex(12)
    event = {
        "id": f"evt_dev_{token}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": now,
        "livemode": False,
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": f"cs_test_{token}",
            "object": "checkout.session",
            "mode": "payment",
            "status": "complete",
            "payment_status": "paid",
            "payment_intent": f"pi_dev_{token}",
            "amount_total": credits,  # a cent per credit, for the demo
            "currency": "usd",
            "client_reference_id": account_id,
            "metadata": {"account_id": account_id, "credits": str(credits)},
        }},
    }
    payload = json.dumps(event).encode()
    body, frame = await _stripe(res, payload, stripe_signature(payload, secret, now))
    if frame is not None:
        res.hub.publish(frame)
    if body["result"] != "fulfilled":
        raise errors.invalid_request(str(body.get("problem", body["result"])))
    return encoder.encode(body["account"])


def routes() -> list[Route]:
    return [
        Route("/v1/webhooks/stripe", stripe_webhook, methods=["POST"]),
        Route("/v1/webhooks/dodo", dodo_webhook, methods=["POST"]),
    ]
