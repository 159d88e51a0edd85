"""A stand-in for Stripe Checkout, so `dev` sells credits end to end with no account anywhere.

`balance-server dev` points the Stripe SDK here (BALANCE_STRIPE_API_BASE=.../dev/stripe).
Checkout creates a session through the SDK; the buyer lands on our hosted page; "Pay"
signs a `checkout.session.completed` with the dev webhook secret and sends it down the
real verification and fulfilment path, then returns the buyer to the app. Sessions live in
this process's memory: it is a dev tool.
"""

from __future__ import annotations

import html
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from server import errors
from server.api.http import resources
from server.api.webhooks import receive_stripe
from server.currencies import STRIPE, Unrepresentable, major
from server.payments.signatures import stripe_signature

PREFIX = "/dev/stripe"


@dataclass
class _Session:
    id: str
    amount: int  # in Stripe's units, as Stripe keeps it
    currency: str
    description: str
    metadata: dict[str, str]
    success_url: str
    cancel_url: str | None
    paid: bool = False


_sessions: dict[str, _Session] = {}


async def create_session(request: Request) -> Response:
    """POST /v1/checkout/sessions, as the Stripe SDK sends it (form-encoded); an amount Stripe
    would refuse is refused as Stripe does."""
    form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    metadata = {k[len("metadata["):-1]: v for k, v in form.items() if k.startswith("metadata[")}
    amount = form.get("line_items[0][price_data][unit_amount]")
    currency = form.get("line_items[0][price_data][currency]", "usd")
    try:
        if amount is None:  # a catalog stripe_price: its price is the package's
            offer = resources(request).catalog.packages.get(metadata.get("package", ""))
            currency = offer.default_currency() if offer else "usd"
            price = offer.price[currency] if offer else 0
            amount = str(STRIPE.to_provider(currency, price))
        if int(amount) % STRIPE.units(currency).step:
            raise Unrepresentable(f"Invalid amount {amount} for {currency.upper()}")
    except Unrepresentable as exc:
        return JSONResponse({"error": {"type": "invalid_request_error", "param": "amount",
                                       "message": str(exc)}}, 400)
    session = _Session(
        id=f"cs_dev_{secrets.token_hex(8)}",
        amount=int(amount),
        currency=currency,
        description=form.get("line_items[0][price_data][product_data][name]",
                             f"package {metadata.get('package')}"),
        metadata=metadata,
        success_url=form["success_url"],
        cancel_url=form.get("cancel_url"),
    )
    _sessions[session.id] = session
    url = f"{request.base_url}{PREFIX[1:]}/pay/{session.id}"
    return JSONResponse({"id": session.id, "object": "checkout.session", "url": url,
                         "mode": "payment", "metadata": metadata})


def _session(request: Request) -> _Session:
    found = _sessions.get(request.path_params["session_id"])
    if found is None:
        raise errors.not_found("no such checkout session")
    return found


async def pay_page(request: Request) -> Response:
    """The hosted payment page."""
    session = _session(request)
    paid = STRIPE.from_provider(session.currency, session.amount)
    price = f"{major(paid, session.currency)} {session.currency.upper()}"
    cancel = (f'<a href="{html.escape(session.cancel_url)}">Cancel</a>'
              if session.cancel_url else "")
    return HTMLResponse(f"""<!doctype html><meta charset="utf-8">
<title>Pay {html.escape(price)}</title>
<style>body{{font:16px system-ui;max-width:26rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.6rem 1.4rem;background:#635bff;color:#fff;border:0;
border-radius:6px;cursor:pointer}}a{{margin-left:1rem}}small{{color:#666}}</style>
<p><small>balance-server dev: a stand-in for Stripe Checkout; no money moves.</small></p>
<h1>{html.escape(session.description)}</h1>
<p>{html.escape(price)}</p>
<form method="post"><button id="pay" type="submit">Pay {html.escape(price)}</button> {cancel}
</form>""")


async def pay(request: Request) -> Response:
    """"Pay": the signed webhook Stripe would send, down the real path; then back to the app."""
    session = _session(request)
    res = resources(request)
    secret = res.settings.stripe_webhook_secret
    if not secret:
        raise errors.not_found("BALANCE_STRIPE_WEBHOOK_SECRET is not set")
    if not session.paid:
        event = checkout_completed(session)
        payload = json.dumps(event).encode()
        answer = await receive_stripe(
            res, payload, stripe_signature(payload, secret, int(time.time())))
        if answer["result"] not in ("fulfilled", "duplicate"):
            raise errors.invalid_request(str(answer.get("problem", answer["result"])))
        session.paid = True
    return RedirectResponse(session.success_url, status_code=303)


def checkout_completed(session: _Session) -> dict[str, Any]:
    """A paid `checkout.session.completed` for the session, as Stripe sends it."""
    return {
        "id": f"evt_dev_{secrets.token_hex(8)}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": session.id,
            "object": "checkout.session",
            "mode": "payment",
            "status": "complete",
            "payment_status": "paid",
            "payment_intent": session.id.replace("cs_", "pi_"),
            "amount_total": session.amount,
            "currency": session.currency,
            "metadata": session.metadata,
        }},
    }


def routes() -> list[BaseRoute]:
    return [
        Route(f"{PREFIX}/v1/checkout/sessions", create_session, methods=["POST"]),
        Route(f"{PREFIX}/pay/{{session_id}}", pay_page, methods=["GET"]),
        Route(f"{PREFIX}/pay/{{session_id}}", pay, methods=["POST"]),
    ]
