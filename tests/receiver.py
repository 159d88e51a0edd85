"""A real local HTTP endpoint standing for the app's webhook receiver: it verifies every
delivery with the standardwebhooks library (the signing secret is SECRET) and records it."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.local_server import local_server

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class Received:
    webhook_id: str
    type: str
    data: dict[str, Any]
    at: float


@dataclass
class Receiver:
    """The app's endpoint: verifies each delivery with the standardwebhooks library, then
    answers what `answers` says (popped per request; 200 when empty) or hangs."""

    url: str = ""
    got: list[Received] = field(default_factory=list)
    answers: list[int | str] = field(default_factory=list)
    forged: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        try:
            Webhook(SECRET).verify(body, dict(request.headers))
        except Exception:
            self.forged += 1
            return Response(status_code=400)
        payload = json.loads(body)
        self.got.append(Received(request.headers["webhook-id"], payload["type"],
                                 payload["data"], time.monotonic()))
        self.arrived.set()
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "hang":
            await asyncio.sleep(3600)
        return Response(status_code=int(answer))

    def of(self, account: str, kind: str | None = None) -> list[Received]:
        return [r for r in self.got if r.data.get("account_id") == account
                and (kind is None or r.type == kind)]


@asynccontextmanager
async def serving() -> AsyncIterator[Receiver]:
    """A receiver listening on a free local port until the block ends."""
    rec = Receiver()
    async with local_server(Starlette(routes=[Route("/hooks", rec.endpoint,
                                                    methods=["POST"])])) as url:
        rec.url = f"{url}/hooks"
        yield rec


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving() as rec:
        yield rec
