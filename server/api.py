"""HTTP routes, thin: authenticate, parse, call the ledger, answer, publish after commit."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import errors, metrics
from server.auth import Identity, bearer, check_service_key
from server.ledger import Outcome, request_hash
from server.messages import (
    AdjustRequest,
    CaptureRequest,
    ChargeRequest,
    CreditRequest,
    DebitRequest,
    HoldRequest,
    TokenRequest,
    decode_body,
    encoder,
)

if TYPE_CHECKING:
    from server.app import Resources

MAX_BODY = 64 * 1024
JSON = "application/json"
_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_KINDS = ("grant", "purchase", "usage", "refund", "reversal", "adjustment", "expiry")

Handler = Callable[[Request], Awaitable[Response]]


def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


async def read_body(request: Request) -> bytes:
    """The raw body, refusing more than 64 KiB without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > MAX_BODY:
            raise errors.payload_too_large(MAX_BODY)
        return await request.body()  # the server stops at the declared length
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise errors.payload_too_large(MAX_BODY)
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(body: bytes, status: int = 200, replayed: bool = False) -> Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def account_param(request: Request) -> str:
    account_id: str = request.path_params["account_id"]
    if not _ACCOUNT_RE.match(account_id):
        raise errors.invalid_request("account_id: 1-128 characters of A-Za-z0-9_.:@-")
    return account_id


def service(handler: Handler) -> Handler:
    """Require a service key before running the handler."""

    async def guarded(request: Request) -> Response:
        check_service_key(request.headers.get("authorization"), resources(request).service_keys)
        return await handler(request)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


def user(request: Request) -> Identity:
    return resources(request).tokens.verify(bearer(request.headers.get("authorization")))


def answer(request: Request, outcome: Outcome) -> Response:
    """Publish the committed change (never blocks, never fails the request), then reply."""
    if outcome.frame is not None:
        resources(request).hub.publish(outcome.frame)
    return json_response(outcome.body, outcome.status, outcome.replayed)


# ---------------------------------------------------------------- query parsing


def _int_query(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.invalid_request(f"{name}: must be an integer") from None
    if not lo <= value <= hi:
        raise errors.invalid_request(f"{name}: must be between {lo} and {hi}")
    return value


def _time_query(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise errors.invalid_request(f"{name}: must be an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise errors.invalid_request(f"{name}: must include a timezone (e.g. Z)")
    return value


async def _history(request: Request, account_id: str) -> Response:
    limit = _int_query(request, "limit", 50, 1, 200)
    before = _int_query(request, "before", None, 1, 2**63 - 1)
    kind = request.query_params.get("kind") or None
    if kind is not None and kind not in _KINDS:
        raise errors.invalid_request(f"kind: must be one of {', '.join(_KINDS)}")
    assert limit is not None
    page = await resources(request).ledger.transactions(
        account_id, limit=limit, before=before, kind=kind
    )
    return json_response(page)


# ---------------------------------------------------------------- backend routes


@service
async def get_account(request: Request) -> Response:
    """The account (created on first mention)."""
    return json_response(await resources(request).ledger.account(account_param(request)))


async def _spend(
    request: Request, account_id: str, amount: int, reason: str, key: str, fingerprint: bytes,
    metadata: dict[str, Any] | None,
) -> Response:
    """The debit shared by /debit and /charge: 402 unless available >= amount."""
    try:
        outcome = await resources(request).ledger.post(
            account_id, kind="usage", amount=-amount, reason=reason, idempotency_key=key,
            fingerprint=fingerprint, metadata=metadata,
        )
    except errors.ApiError as exc:
        if exc.status == 402:
            metrics.insufficient.inc()
        raise
    if not outcome.replayed:
        metrics.debits.inc()
    return answer(request, outcome)


@service
async def debit(request: Request) -> Response:
    """Spend credits: 402 unless available >= amount."""
    account_id = account_param(request)
    body = decode_body(DebitRequest, await read_body(request))
    return await _spend(request, account_id, body.amount, body.reason, body.idempotency_key,
                        request_hash("debit", body), body.metadata)


@service
async def credit(request: Request) -> Response:
    """Add credits (grant, purchase or refund), optionally expiring."""
    account_id = account_param(request)
    body = decode_body(CreditRequest, await read_body(request))
    if body.expires_at is not None:
        if body.expires_at.tzinfo is None:
            raise errors.invalid_request("expires_at: must include a timezone (e.g. Z)")
        if body.expires_at <= datetime.now(body.expires_at.tzinfo):
            raise errors.invalid_request("expires_at: must be in the future")
    outcome = await resources(request).ledger.post(
        account_id, kind=body.kind, amount=body.amount, reason=body.reason,
        idempotency_key=body.idempotency_key, fingerprint=request_hash("credit", body),
        metadata=body.metadata, expires_at=body.expires_at,
    )
    if not outcome.replayed:
        metrics.credits.labels(body.kind).inc()
    return answer(request, outcome)


@service
async def adjust(request: Request) -> Response:
    """An operator's signed correction; a negative one may not overdraw."""
    account_id = account_param(request)
    body = decode_body(AdjustRequest, await read_body(request))
    if body.amount == 0:
        raise errors.invalid_request("amount: must not be 0")
    outcome = await resources(request).ledger.post(
        account_id, kind="adjustment", amount=body.amount, reason=body.reason,
        idempotency_key=body.idempotency_key, fingerprint=request_hash("adjust", body),
        metadata={"actor": body.actor},
    )
    return answer(request, outcome)


@service
async def charge(request: Request) -> Response:
    """Debit the price-list cost of an operation times quantity."""
    account_id = account_param(request)
    body = decode_body(ChargeRequest, await read_body(request))
    price = resources(request).settings.prices.get(body.operation)
    if price is None:
        raise errors.invalid_request(f"operation: unknown operation {body.operation!r}")
    cost = price * body.quantity
    if cost > 10**12:
        raise errors.invalid_request("quantity: total cost is over 10^12 credits")
    metadata = {**(body.metadata or {}), "operation": body.operation, "quantity": body.quantity,
                "unit_cost": price}
    return await _spend(request, account_id, cost, body.operation, body.idempotency_key,
                        request_hash("charge", body), metadata)


@service
async def place_hold(request: Request) -> Response:
    """Reserve credits for an operation in progress: 201, or 402."""
    account_id = account_param(request)
    body = decode_body(HoldRequest, await read_body(request))
    try:
        outcome = await resources(request).ledger.hold(
            account_id, amount=body.amount, ttl_seconds=body.ttl_seconds, reason=body.reason,
            idempotency_key=body.idempotency_key, fingerprint=request_hash("hold", body),
            metadata=body.metadata,
        )
    except errors.ApiError as exc:
        if exc.status == 402:
            metrics.insufficient.inc()
        raise
    return answer(request, outcome)


def _hold_param(request: Request) -> str:
    hold_id: str = request.path_params["hold_id"]
    if not _UUID_RE.match(hold_id):
        raise errors.not_found("no such hold")
    return hold_id


@service
async def capture_hold(request: Request) -> Response:
    """Spend all or part of a hold; the rest is released."""
    hold_id = _hold_param(request)
    body = decode_body(CaptureRequest, await read_body(request))
    outcome = await resources(request).ledger.resolve_hold(
        hold_id, "capture", amount=body.amount, metadata=body.metadata
    )
    metrics.debits.inc()
    return answer(request, outcome)


@service
async def release_hold(request: Request) -> Response:
    """Give a hold's credits back to available."""
    hold_id = _hold_param(request)
    await read_body(request)
    outcome = await resources(request).ledger.resolve_hold(hold_id, "release")
    return answer(request, outcome)


@service
async def list_transactions(request: Request) -> Response:
    """History, newest first, cursor-paged."""
    return await _history(request, account_param(request))


@service
async def usage(request: Request) -> Response:
    """Spending grouped by reason or UTC day."""
    account_id = account_param(request)
    group_by = request.query_params.get("group_by", "reason")
    if group_by not in ("reason", "day"):
        raise errors.invalid_request("group_by: must be 'reason' or 'day'")
    body = await resources(request).ledger.usage(
        account_id, since=_time_query(request, "since"), until=_time_query(request, "until"),
        group_by=group_by,
    )
    return json_response(body)


@service
async def mint_token(request: Request) -> Response:
    """A short-lived user token for the browser (WebSocket, /v1/me)."""
    body = decode_body(TokenRequest, await read_body(request))
    token, expires_at = resources(request).tokens.mint(body.account_id, body.ttl_seconds)
    return json_response(encoder.encode({"token": token, "expires_at": expires_at}))


@service
async def prices(request: Request) -> Response:
    """The price list."""
    return json_response(encoder.encode(resources(request).settings.prices))


# ---------------------------------------------------------------- browser routes


async def me(request: Request) -> Response:
    """The token's account and its latest 20 transactions."""
    identity = user(request)
    return json_response(await resources(request).ledger.latest(identity.account_id))


async def my_transactions(request: Request) -> Response:
    """History of the token's account."""
    return await _history(request, user(request).account_id)


def routes() -> list[Route]:
    return [
        Route("/v1/accounts/{account_id}", get_account, methods=["GET"]),
        Route("/v1/accounts/{account_id}/debit", debit, methods=["POST"]),
        Route("/v1/accounts/{account_id}/credit", credit, methods=["POST"]),
        Route("/v1/accounts/{account_id}/adjust", adjust, methods=["POST"]),
        Route("/v1/accounts/{account_id}/charge", charge, methods=["POST"]),
        Route("/v1/accounts/{account_id}/holds", place_hold, methods=["POST"]),
        Route("/v1/accounts/{account_id}/transactions", list_transactions, methods=["GET"]),
        Route("/v1/accounts/{account_id}/usage", usage, methods=["GET"]),
        Route("/v1/holds/{hold_id}/capture", capture_hold, methods=["POST"]),
        Route("/v1/holds/{hold_id}/release", release_hold, methods=["POST"]),
        Route("/v1/tokens", mint_token, methods=["POST"]),
        Route("/v1/prices", prices, methods=["GET"]),
        Route("/v1/me", me, methods=["GET"]),
        Route("/v1/me/transactions", my_transactions, methods=["GET"]),
    ]

