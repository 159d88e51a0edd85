"""Routes mounted only by `balance-server dev`: the demo page and its helpers.

They stand in for the app's own backend (which would hold the service key) so the demo
page can mint a token and spend credits without any app around it; buying goes through
the real checkout, against the Stripe stand-in (standin.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server.api import backend
from server.api.http import json_response, read_body, resources
from server.dev import CLIENT_JS, inbox, standin
from server.ledger import request_hash
from server.messages import (
    AccountId,
    Amount,
    ChargeRequest,
    DebitRequest,
    decode_body,
    encoder,
)


class DevToken(msgspec.Struct):
    account_id: AccountId


class DevSpend(msgspec.Struct):
    account_id: AccountId
    amount: Amount
    reason: Annotated[str, msgspec.Meta(max_length=200)] = "demo"


async def dev_token(request: Request) -> Response:
    """What an app's sign-in does: create the account (its welcome credits, once; a read
    never creates it) and mint its browser token."""
    body = decode_body(DevToken, await read_body(request))
    await resources(request).ledger.open(body.account_id)
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


class DevCharge(msgspec.Struct):
    account_id: AccountId
    operation: Annotated[str, msgspec.Meta(max_length=200)]


class DevPlan(msgspec.Struct):
    account_id: AccountId
    plan: Annotated[str, msgspec.Meta(max_length=200)] | None


async def dev_charge(request: Request) -> Response:
    """A charge by operation, as the app's backend would make it (priced by plan)."""
    body = decode_body(DevCharge, await read_body(request))
    charge = ChargeRequest(body.operation, idempotency_key=f"dev-{uuid.uuid4()}")
    outcome = await backend.charge_operation(resources(request), body.account_id, charge)
    return json_response(outcome.body)


async def dev_plan(request: Request) -> Response:
    """Put the account on a plan (or none), as the app's backend would on a subscription."""
    body = decode_body(DevPlan, await read_body(request))
    res = resources(request)
    request_key = f"dev-{uuid.uuid4()}"
    outcome = await res.plans.assign(body.account_id, body.plan, None, request_key,
                                     request_key.encode())
    return json_response(outcome.body)


async def demo_page(request: Request) -> Response:
    return FileResponse(CLIENT_JS / "demo" / "index.html")


def routes() -> list[BaseRoute]:
    return [
        Route("/", demo_page, methods=["GET"]),
        Route("/dev/token", dev_token, methods=["POST"]),
        Route("/dev/spend", dev_spend, methods=["POST"]),
        Route("/dev/charge", dev_charge, methods=["POST"]),
        Route("/dev/plan", dev_plan, methods=["POST"]),
        Mount("/client", StaticFiles(directory=CLIENT_JS / "src", check_dir=False)),
        Mount("/demo", StaticFiles(directory=CLIENT_JS / "demo", check_dir=False)),
        *standin.routes(),
        *inbox.routes(),
    ]
