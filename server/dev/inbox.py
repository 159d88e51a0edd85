"""`balance-server dev`'s stand-in for the app's webhook endpoint: it receives the app
webhooks this server sends (checking their Standard Webhooks signature, as an app must)
and shows them on a page, so a newcomer sees `balance.low` or `purchase.completed` arrive.
Kept in memory, newest first, the last 200."""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.api.http import resources
from server.dev import CLIENT_JS

_received: deque[dict[str, Any]] = deque(maxlen=200)



async def receive(request: Request) -> Response:
    secret = resources(request).settings.app_webhook_secret
    if secret is None:
        return Response(status_code=404)
    body = await request.body()
    try:
        Webhook(secret).verify(body, dict(request.headers))
    except WebhookVerificationError:
        return Response(status_code=400)
    payload = json.loads(body)
    _received.appendleft({"webhook_id": request.headers.get("webhook-id"),
                          "type": payload.get("type"), "data": payload.get("data"),
                          "received": time.time()})
    return Response(status_code=204)


async def page(request: Request) -> Response:
    return FileResponse(CLIENT_JS / "demo" / "webhooks.html")


async def received(request: Request) -> Response:
    return JSONResponse(list(_received))


def routes() -> list[BaseRoute]:
    return [
        Route("/dev/webhooks", page, methods=["GET"]),
        Route("/dev/webhooks", receive, methods=["POST"]),
        Route("/dev/webhooks.json", received, methods=["GET"]),
    ]
