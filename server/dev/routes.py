"""Routes mounted only by `balance-server dev`: the demo page and its helpers.

They stand in for the app's own backend (which would hold the service key) so the demo
page can mint a token, spend credits and buy a pack without any app around it.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server import errors
from server.api.http import json_response, read_body, resources
from server.api.webhooks import receive_stripe
from server.ledger import request_hash
from server.messages import AccountId, Amount, DebitRequest, decode_body, encoder
from server.payments.signatures import stripe_signature

CLIENT_JS = Path(__file__).resolve().parent.parent.parent / "client_js"


class DevToken(msgspec.Struct):
    account_id: AccountId


class DevSpend(msgspec.Struct):
    account_id: AccountId
    amount: Amount
    reason: Annotated[str, msgspec.Meta(max_length=200)] = "demo"


class DevBuy(msgspec.Struct):
    account_id: AccountId
    credits: Amount


async def dev_token(request: Request) -> Response:
    body = decode_body(DevToken, await read_body(request))
    token, expires_at = resources(request).tokens.mint(body.account_id, 3600)
    return json_response(encoder.encode({"token": token, "expires_at": expires_at}))


async def dev_spend(request: Request) -> Response:
    body = decode_body(DevSpend, await read_body(request))
    debit = DebitRequest(body.amount, body.reason, idempotency_key=f"dev-{uuid.uuid4()}")
    outcome = await resources(request).ledger.post(
        body.account_id, kind="usage", amount=-body.amount, reason=body.reason,
        idempotency_key=debit.idempotency_key, fingerprint=request_hash("debit", debit),
    )
    return json_response(outcome.body)


def checkout_completed(
    account_id: str, package: str | None, amount: int, credits: int
) -> dict[str, Any]:
    """A paid `checkout.session.completed`, as Stripe would send it for this sale."""
    token = secrets.token_hex(12)
    metadata = {"account_id": account_id, "credits": str(credits)}
    if package is not None:
        metadata["package"] = package
    return {
        "id": f"evt_dev_{token}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": f"cs_test_{token}",
            "object": "checkout.session",
            "mode": "payment",
            "status": "complete",
            "payment_status": "paid",
            "payment_intent": f"pi_dev_{token}",
            "amount_total": amount,
            "currency": "usd",
            "client_reference_id": account_id,
            "metadata": metadata,
        }},
    }


async def dev_buy(request: Request) -> Response:
    """Buy credits: the catalog's package of that size at its price (else a credit a cent),
    paid by a Stripe-signed checkout.session.completed down the real webhook path."""
    body = decode_body(DevBuy, await read_body(request))
    res = resources(request)
    secret = res.settings.stripe_webhook_secret
    if not secret:
        raise errors.not_found("BALANCE_STRIPE_WEBHOOK_SECRET is not set")
    package, amount = None, body.credits
    for name, offer in res.catalog.packages.items():
        if offer.credits == body.credits and "usd" in offer.price:
            package, amount = name, offer.price["usd"]
            break
    event = checkout_completed(body.account_id, package, amount, body.credits)
    payload = json.dumps(event).encode()
    answer = await receive_stripe(
        res, payload, stripe_signature(payload, secret, int(time.time())))
    if answer["result"] != "fulfilled":
        raise errors.invalid_request(str(answer.get("problem", answer["result"])))
    return json_response(b'{"account":' + encoder.encode(answer["account"]) + b"}")


async def demo_page(request: Request) -> Response:
    return FileResponse(CLIENT_JS / "demo" / "index.html")


def routes() -> list[BaseRoute]:
    return [
        Route("/", demo_page, methods=["GET"]),
        Route("/dev/token", dev_token, methods=["POST"]),
        Route("/dev/spend", dev_spend, methods=["POST"]),
        Route("/dev/buy", dev_buy, methods=["POST"]),
        Mount("/client", StaticFiles(directory=CLIENT_JS / "src", check_dir=False)),
        Mount("/demo", StaticFiles(directory=CLIENT_JS / "demo", check_dir=False)),
    ]
