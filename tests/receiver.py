"""A real local HTTP endpoint standing for the app's webhook receiver: it verifies every
delivery with the standardwebhooks library (the signing secret is SECRET) and records it."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.dev.servers import free_port

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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/hooks", rec.endpoint, methods=["POST"])]),
        host="127.0.0.1", port=free_port(), log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    rec.url = f"http://127.0.0.1:{server.config.port}/hooks"
    yield rec
    server.should_exit = True
    server.force_exit = True
    await task
