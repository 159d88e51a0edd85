"""A FastAPI app that charges for image generations with balance-server's SDK.

    BALANCE_API_URL=http://127.0.0.1:8000 BALANCE_SERVICE_KEY=sk_... \\
    BALANCE_APP_WEBHOOK_SECRET=whsec_... uvicorn app:app --port 3000

POST /generations {"job_id": "..."} charges the catalog's price of `generate_image` only
when the generation succeeds: the credits are held first (402 when there are too few),
released when it fails, captured when it succeeds. The job id is the key, so a retry of the
same job (a double click, the browser's retry after a timeout) is charged once: while the
first runs it shares the first's hold, and once that settled it answers 409 without doing
the work again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from balance_client import (
    AsyncBalance,
    HoldNotActive,
    InsufficientCredits,
    LimitReached,
    WebhookVerificationError,
    verify_webhook,
)


class Generation(BaseModel):
    job_id: str = Field(min_length=1, max_length=100)
    prompt: str = Field(max_length=2000)


async def fake_generate(prompt: str) -> str:
    """Your model call. It fails on "fail", so the example shows a failure is not charged."""
    if prompt == "fail":
        raise RuntimeError("the model failed")
    return f"https://images.example/{abs(hash(prompt))}.png"


def current_user(request: Request) -> str:
    """Your auth's user id (here a header, for the example)."""
    user = request.headers.get("x-user")
    if not user:
        raise HTTPException(401, "sign in")
    return user


def create_app(balance: AsyncBalance | None = None,
               generate: Callable[[str], Awaitable[str]] = fake_generate) -> FastAPI:
    """The app; `balance` defaults to one from BALANCE_API_URL and BALANCE_SERVICE_KEY."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.balance = balance or AsyncBalance()
        yield
        await app.state.balance.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/generations")
    async def create_generation(job: Generation, request: Request) -> dict[str, Any]:
        user = current_user(request)
        client: AsyncBalance = request.app.state.balance
        try:
            async with client.reserve(user, operation="generate_image",
                                      key=f"gen:{user}:{job.job_id}") as charge:
                url = await generate(job.prompt)
        except InsufficientCredits as exc:
            raise HTTPException(402, {"error": exc.code, "required": exc.required,
                                      "available": exc.available}) from None
        except LimitReached as exc:
            raise HTTPException(402, {"error": exc.code, "limit": exc.limit}) from None
        except HoldNotActive as exc:
            # This job was already settled (paid for, or failed and released): your app
            # answers the job's stored result here; a new attempt is a new job id.
            raise HTTPException(409, {"error": "job_already_settled",
                                      "status": exc.hold_status}) from None
        except RuntimeError as exc:
            raise HTTPException(502, f"generation failed, nothing charged: {exc}") from None
        assert charge.captured is not None
        return {"url": url, "charged": -charge.captured.transaction.amount,
                "balance": charge.captured.account.available,
                "replayed": charge.captured.replayed}

    @app.post("/balance-token")
    async def balance_token(request: Request) -> dict[str, Any]:
        """What the browser's live balance connects with."""
        client: AsyncBalance = request.app.state.balance
        token = await client.create_token(current_user(request), ttl_seconds=900)
        return {"token": token.token, "expires_at": token.expires_at}

    @app.post("/webhooks/balance")
    async def balance_webhook(request: Request) -> dict[str, str]:
        """balance-server's app webhooks (low balance, purchases...), verified on the raw
        body."""
        try:
            event = verify_webhook(os.environ["BALANCE_APP_WEBHOOK_SECRET"],
                                   await request.body(), request.headers)
        except WebhookVerificationError:
            raise HTTPException(401, "bad signature") from None
        request.app.state.last_event = event  # your handler: email the user, and so on
        return {"received": event.type}

    return app


app = create_app()
