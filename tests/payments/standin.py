"""A local stand-in of Stripe's and Dodo's checkout APIs that records the exact requests
the official SDKs send it (tests/payments/test_checkout.py, tests/api/test_openapi.py).

It is faithful about money: it refuses an amount Stripe's API refuses, and what it says was
paid (`paid_session`, `succeeded_intent`) is the amount it was asked for, in Stripe's units.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.local_server import local_server

# Stripe's own rules for amounts (https://docs.stripe.com/currencies: "Special cases",
# "Three-decimal currencies"), written out apart from the server's table so that a slip in
# one is caught by the other. ISK and UGX are sent as two-decimal values whose decimals are
# always 00; the last digit of a three-decimal amount must be 0.
WHOLE_IN_HUNDREDTHS = frozenset({"isk", "ugx"})
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def stripe_refuses(amount: int, currency: str) -> str | None:
    """Why Stripe's API would refuse to charge `amount` of `currency`, or None."""
    if currency != currency.lower():
        return f"Invalid currency: {currency} (Stripe takes lower case)"
    if currency in WHOLE_IN_HUNDREDTHS and amount % 100:
        return (f"Invalid amount. Currency {currency.upper()} has become effectively "
                "zero-decimal and charged amounts must be evenly divisible by 100.")
    if currency in THREE_DECIMAL and amount % 10:
        return f"Invalid amount: {currency.upper()} amounts must end in 0."
    return None


def _refused(message: str) -> Response:
    return JSONResponse({"error": {"type": "invalid_request_error", "param": "amount",
                                   "code": "invalid_charge_amount", "message": message}}, 400)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    json: Any = None


@dataclass
class StandIn:
    """Stripe's /v1/checkout/sessions and /v1/payment_intents and Dodo's /checkouts, as far
    as checkout and auto top-up use them."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    failing: bool = False
    declines: int = 0  # PaymentIntents to decline before succeeding again
    answered: dict[str, Response] = field(default_factory=dict)
    # The Prices this Stripe account has (price id -> unit amount in Stripe's units, currency).
    prices: dict[str, tuple[int, str]] = field(default_factory=lambda: {
        "price_starter": (500, "usd"), "price_pro": (2000, "usd"),
        "price_max": (5000, "usd")})
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    keyed: dict[str, dict[str, str]] = field(default_factory=dict)  # first form per key

    async def stripe(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers), form))
        if self.failing:
            return JSONResponse({"error": {"type": "api_error", "message": "down"}}, 500)
        metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
        if form.get("mode") == "subscription":
            return self._subscription_session(form, metadata)
        amount, currency = self._line_item(form)
        if amount is not None and currency is not None:
            refused = stripe_refuses(amount, currency)
            if refused:
                return _refused(refused)
        session = f"cs_test_{uuid.uuid4().hex[:10]}"
        self.sessions[session] = {
            "id": session, "object": "checkout.session", "mode": "payment",
            "amount_total": amount, "currency": currency, "metadata": metadata,
            "payment_intent": f"pi_test_{uuid.uuid4().hex[:14]}"}
        return JSONResponse({"id": session, "object": "checkout.session", "mode": "payment",
                             "url": f"https://checkout.stripe.test/c/pay/{session}",
                             "metadata": metadata})

    def _subscription_session(self, form: dict[str, str], metadata: dict[str, str]) -> Response:
        """A Checkout session in subscription mode, as Stripe answers it: a subscription of
        the one recurring price, carrying `subscription_data[metadata]`."""
        price = form.get("line_items[0][price]", "")
        if price not in self.prices:
            return JSONResponse({"error": {"type": "invalid_request_error",
                                           "param": "line_items[0][price]",
                                           "message": f"No such price: '{price}'"}}, 400)
        session = f"cs_test_{uuid.uuid4().hex[:10]}"
        sub = f"sub_test_{uuid.uuid4().hex[:12]}"
        prefix = "subscription_data[metadata]["
        self.subscriptions[sub] = {
            "id": sub, "customer": f"cus_test_{uuid.uuid4().hex[:10]}", "price": price,
            "metadata": {k[len(prefix):-1]: v for k, v in form.items()
                         if k.startswith(prefix)},
            "payment_method": f"pm_test_{uuid.uuid4().hex[:10]}"}
        self.sessions[session] = {"id": session, "object": "checkout.session",
                                  "mode": "subscription", "subscription": sub,
                                  "metadata": metadata}
        return JSONResponse({"id": session, "object": "checkout.session",
                             "mode": "subscription",
                             "url": f"https://checkout.stripe.test/c/pay/{session}",
                             "metadata": metadata})

    def subscription(self, sub: str, status: str = "active", *, price: str | None = None,
                     start: int = 0, end: int = 0, cancel_at_period_end: bool = False,
                     metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """The Subscription object a `customer.subscription.*` event carries (API
        2025-03-31 and later: the period is on its item)."""
        known = self.subscriptions[sub]
        return {
            "id": sub, "object": "subscription", "customer": known["customer"],
            "status": status, "metadata": known["metadata"] if metadata is None else metadata,
            "default_payment_method": known["payment_method"],
            "cancel_at_period_end": cancel_at_period_end, "cancel_at": None,
            "items": {"object": "list", "data": [{
                "id": f"si_{sub}", "object": "subscription_item",
                "price": {"id": price or known["price"], "object": "price"},
                "current_period_start": start, "current_period_end": end}]}}

    def invoice(self, sub: str, reason: str, start: int, end: int, *,
                invoice_id: str | None = None, price: str | None = None,
                proration: bool = False,
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """The Invoice object an `invoice.*` event carries for the subscription (API
        2025-03-31 and later: `parent.subscription_details`, `pricing.price_details`)."""
        known = self.subscriptions[sub]
        price = price or known["price"]
        return {
            "id": invoice_id or f"in_test_{uuid.uuid4().hex[:12]}", "object": "invoice",
            "billing_reason": reason, "customer": known["customer"], "currency": "usd",
            "amount_paid": self.prices[price][0],
            "parent": {"type": "subscription_details", "subscription_details": {
                "subscription": sub,
                "metadata": known["metadata"] if metadata is None else metadata}},
            "lines": {"object": "list", "data": [{
                "id": f"il_test_{uuid.uuid4().hex[:10]}", "object": "line_item",
                "period": {"start": start, "end": end},
                "pricing": {"type": "price_details",
                            "price_details": {"price": price, "product": f"prod_{price}"}},
                "parent": {"type": "subscription_item_details", "subscription_item_details": {
                    "subscription": sub, "subscription_item": f"si_{sub}",
                    "proration": proration}}}]}}

    def _line_item(self, form: dict[str, str]) -> tuple[int | None, str | None]:
        """What the session's one line item charges, in Stripe's units."""
        quantity = int(form.get("line_items[0][quantity]", "1"))
        if "line_items[0][price]" in form:
            known = self.prices.get(form["line_items[0][price]"])
            return (known[0] * quantity, known[1]) if known else (None, None)
        amount = form.get("line_items[0][price_data][unit_amount]")
        return (int(amount) * quantity if amount is not None else None,
                form.get("line_items[0][price_data][currency]"))

    def paid_session(self, session_id: str) -> dict[str, Any]:
        """The session as `checkout.session.completed` carries it once the buyer paid."""
        return {**self.sessions[session_id], "status": "complete", "payment_status": "paid"}

    def succeeded_intent(self, intent_id: str) -> dict[str, Any]:
        """The PaymentIntent as `payment_intent.succeeded` carries it."""
        intent = self.intents[intent_id]
        return {**intent, "status": "succeeded", "amount_received": intent["amount"]}

    async def payment_intent(self, request: Request) -> Response:
        """Stripe's POST /v1/payment_intents: succeeds, or declines while `declines` > 0, or
        fails while `failing`. A repeated Idempotency-Key answers the first answer again, as
        Stripe does, and is refused with other parameters than its first request's."""
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers), form))
        key = request.headers.get("idempotency-key", "")
        if self.keyed.setdefault(key, form) != form:
            return JSONResponse({"error": {
                "type": "idempotency_error", "message": "Keys for idempotent requests can only "
                "be used with the same parameters they were first used with."}}, 400)
        if self.failing:
            return JSONResponse({"error": {"type": "api_error", "message": "down"}}, 500)
        if key in self.answered:
            return self.answered[key]
        refused = stripe_refuses(int(form["amount"]), form["currency"])
        if refused:
            answer: Response = _refused(refused)
        elif self.declines > 0:
            self.declines -= 1
            answer = JSONResponse({"error": {
                "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds."}}, 402)
        else:
            intent: dict[str, Any] = {
                "id": f"pi_test_{uuid.uuid4().hex[:14]}", "object": "payment_intent",
                "status": "succeeded", "amount": int(form["amount"]),
                "currency": form["currency"],
                "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}}
            self.intents[intent["id"]] = intent
            answer = JSONResponse(intent)
        self.answered[key] = answer
        return answer

    async def dodo(self, request: Request) -> Response:
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers),
                              json=await request.json()))
        if self.failing:
            return JSONResponse({"code": "INTERNAL", "message": "down"}, 500)
        session = f"cks_{uuid.uuid4().hex[:10]}"
        return JSONResponse({"session_id": session,
                             "checkout_url": f"https://test.checkout.dodopayments.com/{session}"})


@pytest.fixture(scope="module")
async def stand_in() -> AsyncIterator[StandIn]:
    standin = StandIn()
    app = Starlette(routes=[Route("/v1/checkout/sessions", standin.stripe, methods=["POST"]),
                            Route("/v1/payment_intents", standin.payment_intent,
                                  methods=["POST"]),
                            Route("/checkouts", standin.dodo, methods=["POST"])])
    async with local_server(app) as url:
        standin.url = url
        yield standin
