"""A local stand-in of Stripe's and Dodo's checkout APIs that records the exact requests
the official SDKs send it (tests/payments/test_checkout.py, tests/api/test_openapi.py)."""

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


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    json: Any = None


@dataclass
class StandIn:
    """Stripe's /v1/checkout/sessions and Dodo's /checkouts, as far as checkout uses them."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    failing: bool = False
    declines: int = 0  # PaymentIntents to decline before succeeding again
    answered: dict[str, Response] = field(default_factory=dict)

    async def stripe(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers), form))
        if self.failing:
            return JSONResponse({"error": {"type": "api_error", "message": "down"}}, 500)
        session = f"cs_test_{uuid.uuid4().hex[:10]}"
        return JSONResponse({"id": session, "object": "checkout.session", "mode": "payment",
                             "url": f"https://checkout.stripe.test/c/pay/{session}",
                             "metadata": {k[9:-1]: v for k, v in form.items()
                                          if k.startswith("metadata[")}})

    async def payment_intent(self, request: Request) -> Response:
        """Stripe's POST /v1/payment_intents: succeeds, or declines while `declines` > 0.
        A repeated Idempotency-Key answers the first answer again, as Stripe does."""
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers), form))
        key = request.headers.get("idempotency-key", "")
        if key in self.answered:
            return self.answered[key]
        if self.declines > 0:
            self.declines -= 1
            answer: Response = JSONResponse({"error": {
                "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds."}}, 402)
        else:
            answer = JSONResponse({
                "id": f"pi_test_{uuid.uuid4().hex[:14]}", "object": "payment_intent",
                "status": "succeeded", "amount": int(form["amount"]),
                "currency": form["currency"],
                "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}})
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
