"""Routes mounted only by `balance-server dev`: the demo page and its helpers.

They stand in for the app's own backend (which would hold the service key) so the demo
page can mint a token and spend credits without any app around it; buying goes through
the real checkout, against the Stripe stand-in (standin.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server.api.http import json_response, read_body, resources
from server.dev import standin
from server.ledger import request_hash
from server.messages import AccountId, Amount, DebitRequest, decode_body, encoder

CLIENT_JS = Path(__file__).resolve().parent.parent.parent / "client_js"


class DevToken(msgspec.Struct):
    account_id: AccountId


class DevSpend(msgspec.Struct):
    account_id: AccountId
    amount: Amount
    reason: Annotated[str, msgspec.Meta(max_length=200)] = "demo"


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


async def demo_page(request: Request) -> Response:
    return FileResponse(CLIENT_JS / "demo" / "index.html")


def routes() -> list[BaseRoute]:
    return [
        Route("/", demo_page, methods=["GET"]),
        Route("/dev/token", dev_token, methods=["POST"]),
        Route("/dev/spend", dev_spend, methods=["POST"]),
        Mount("/client", StaticFiles(directory=CLIENT_JS / "src", check_dir=False)),
        Mount("/demo", StaticFiles(directory=CLIENT_JS / "demo", check_dir=False)),
        *standin.routes(),
    ]
