"""POST /v1/webhooks/stripe and /v1/webhooks/dodo: verify the raw body, then fulfil.

Answers: 404 `not_found` when the provider's secret is not configured (unsigned events are
never accepted, and the route does not advertise itself); 401 `unauthorized` for a
missing, malformed, wrong or stale signature, writing nothing; 400 / 422 for a signed body
that is not an event we can read; 413 over 64 KiB; otherwise 200 with
`{"received": true, "result": ...}` (payments/fulfilment.py lists the results).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request

from server import errors, metrics
from server.api.http import read_body, resources
from server.messages import decode_body, encoder
from server.payments.dodo import DodoEvent, parse_dodo
from server.payments.events import ID_RE
from server.payments.signatures import SignatureError, verify_standard, verify_stripe
from server.payments.stripe import StripeEvent, parse_stripe
from server.resources import Resources


def _refused(provider: str, exc: SignatureError) -> errors.Problem:
    metrics.signatures_rejected.labels(provider).inc()
    return errors.unauthorized(f"webhook signature refused: {exc}")


async def receive_stripe(res: Resources, payload: bytes, signature: str | None) -> dict[str, Any]:
    """A Stripe delivery, verified and fulfilled; the answer's body."""
    secret = res.settings.stripe_webhook_secret
    if not secret:
        raise errors.not_found("no such route")
    try:
        verify_stripe(payload, signature, secret, time.time())
    except SignatureError as exc:
        raise _refused("stripe", exc) from None
    event = decode_body(StripeEvent, payload, strict=False)
    if not ID_RE.fullmatch(event.id):
        raise errors.invalid_request("id: not an event id")
    return await res.fulfilment.fulfil(
        "stripe", event.id, event.type, parse_stripe(event), payload)


async def stripe_webhook(request: Request) -> bytes:
    """Stripe events: Checkout / PaymentIntent purchases and charge refunds."""
    payload = await read_body(request)
    body = await receive_stripe(
        resources(request), payload, request.headers.get("stripe-signature"))
    return encoder.encode(body)


async def dodo_webhook(request: Request) -> bytes:
    """Dodo Payments events (Standard Webhooks): payment.succeeded, refund.succeeded."""
    res = resources(request)
    key = res.settings.dodo_webhook_key
    if not key:
        raise errors.not_found("no such route")
    payload = await read_body(request)
    headers = request.headers
    msg_id = headers.get("webhook-id")
    try:
        verify_standard(payload, msg_id, headers.get("webhook-timestamp"),
                        headers.get("webhook-signature"), key, time.time())
    except SignatureError as exc:
        raise _refused("dodo", exc) from None
    assert msg_id is not None  # verify_standard refuses a delivery without one
    if not ID_RE.fullmatch(msg_id):
        raise errors.invalid_request("webhook-id: not an id")
    event = decode_body(DodoEvent, payload, strict=False)
    body = await res.fulfilment.fulfil(
        "dodo", msg_id, event.type, parse_dodo(event, msg_id), payload)
    return encoder.encode(body)
