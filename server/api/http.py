"""What every route shares: the resources, the raw body, path and query parameters, answers."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from server import errors, logs
from server.audit import Audit
from server.auth import Identity, bearer
from server.db import DB_DOWN
from server.history import KINDS
from server.ledger import Outcome, request_hash
from server.messages import ACCOUNT_ID_RULE, CheckoutRequest, Timestamp, decode_body, is_account_id
from server.resources import Resources

log = logging.getLogger("balance.api")

MAX_BODY = 64 * 1024
PAGE_SIZE = (1, 200)  # history's `limit`: least and most
CURSOR = (1, 2**63 - 1)  # history's `before`: a transaction id
JSON = "application/json"
CLIENT_CLOSED = 499  # the status a request whose client left mid-body is counted under
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")


def resources(request: Request) -> Resources:
    """The lifespan's resources."""
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


def json_response(body: bytes, status: int = 200) -> Response:
    """Already-encoded JSON, from a request function (the dev routes); the API's operations
    answer through routes._Endpoint, which also says when a response is a replay."""
    return Response(body, status_code=status, media_type=JSON)


def account_param(request: Request) -> str:
    """The `{account_id}` of the path, or 422."""
    account_id: str = request.path_params["account_id"]
    if not is_account_id(account_id):
        raise errors.invalid_request(f"account_id: {ACCOUNT_ID_RULE}")
    logs.ACCOUNT.set(account_id)  # this request's log lines name it
    return account_id


def hold_param(request: Request) -> str:
    """The `{hold_id}` of the path; anything but a UUID names no hold (404)."""
    hold_id: str = request.path_params["hold_id"]
    if not _UUID_RE.fullmatch(hold_id):
        raise errors.not_found("no such hold")
    return hold_id


def id_param(request: Request, what: str) -> int:
    """The `{<what>_id}` of the path (an event's, a review's); anything but such an id names
    nothing (404)."""
    raw: str = request.path_params[f"{what}_id"]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= CURSOR[1]:
        raise errors.not_found(f"no such {what}")
    return int(raw)


ACTOR = "balance.actor"  # the ASGI scope key routes._authenticate names the acting key in
CONSOLE = "console:"  # an actor acting through a console session: its key's name after it


def actor(request: Request) -> str:
    """Who is acting: the service key's name (console:<name> for a console session)."""
    name: str = request.scope[ACTOR]
    return name


AUDIT_REASON = "x-audit-reason"  # why, for the audit log: percent-encoded UTF-8
AUDIT_REASON_MOST = 500


def audit_reason(request: Request) -> str | None:
    """The request's X-Audit-Reason, decoded, or 422 (too long, not UTF-8, a control
    character)."""
    raw = request.headers.get(AUDIT_REASON)
    if raw is None:
        return None
    try:  # ASCII on the wire (raw UTF-8 would read as Latin-1 here): the escapes carry it
        reason = unquote(raw, errors="strict").strip() if raw.isascii() else None
    except UnicodeDecodeError:
        reason = None
    if not reason or len(reason) > AUDIT_REASON_MOST or not reason.isprintable():
        raise errors.invalid_request(
            f"X-Audit-Reason: 1-{AUDIT_REASON_MOST} printable characters, percent-encoded UTF-8")
    return reason


def audit(request: Request, action: str, account_id: str | None, subject: str,
          detail: dict[str, Any] | None = None) -> Audit:
    """The audit row of an operator action this request makes; its X-Audit-Reason, when
    sent, is the detail's `reason` (unless the request's body gave one)."""
    detail = dict(detail or {})
    reason = audit_reason(request)
    if reason is not None and not detail.get("reason"):
        detail["reason"] = reason
    return Audit(actor(request), action, account_id, subject, detail)


def console_audit(request: Request, action: str, account_id: str | None, subject: str,
                  detail: dict[str, Any] | None = None) -> Audit | None:
    """As `audit` for an action done from the console; None when the app's backend does it
    (a worker releasing its holds is not an operator)."""
    if not actor(request).startswith(CONSOLE):
        return None
    return audit(request, action, account_id, subject, detail)


def account_query(request: Request) -> str | None:
    """The `account_id` query parameter (only this account's), or 422."""
    account_id = request.query_params.get("account_id")
    if account_id is not None and not is_account_id(account_id):
        raise errors.invalid_request(f"account_id: {ACCOUNT_ID_RULE}")
    return account_id


def text_query(request: Request, name: str, most: int) -> str | None:
    """A query parameter of printable ASCII, at most `most` characters, or 422."""
    raw = request.query_params.get(name)
    if raw is not None and (len(raw) > most or not raw.isascii() or not raw.isprintable()):
        raise errors.invalid_request(f"{name}: at most {most} printable ASCII characters")
    return raw


def user(request: Request) -> Identity:
    """The account a browser's user token speaks for, or 401."""
    identity = resources(request).tokens.verify(bearer(request.headers.get("authorization")))
    logs.ACCOUNT.set(identity.account_id)  # this request's log lines name it
    return identity


async def limited_user(request: Request, limit: str) -> Identity:
    """`user`, counted against the account's `limit` (429 past it)."""
    identity = user(request)
    retry = await resources(request).limits.hit(limit, identity.account_id)
    if retry is not None:
        raise errors.rate_limited(retry)
    return identity


def int_query(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer query parameter within [lo, hi], or 422."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.invalid_request(f"{name}: must be an integer") from None
    if not lo <= value <= hi:
        raise errors.invalid_request(f"{name}: must be between {lo} and {hi}")
    return value


def time_query(request: Request, name: str) -> datetime | None:
    """An RFC 3339 timestamp (with its offset, as OpenAPI's date-time), or 422."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, Timestamp)
    except msgspec.ValidationError:
        raise errors.invalid_request(
            f"{name}: must be an RFC 3339 timestamp with an offset, e.g. 2026-01-31T00:00:00Z"
        ) from None


async def history_page(request: Request, account_id: str) -> bytes:
    """A page of the account's transactions, newest first, from the query's parameters."""
    limit = int_query(request, "limit", 50, *PAGE_SIZE)
    before = int_query(request, "before", None, *CURSOR)
    kind = request.query_params.get("kind")
    if kind is not None and kind not in KINDS:
        raise errors.invalid_request(f"kind: must be one of {', '.join(KINDS)}")
    assert limit is not None
    return await resources(request).history.transactions(
        account_id, limit=limit, before=before, kind=kind
    )


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.Problem)
    retry = exc.details.get("retry_after")
    headers = {"Retry-After": str(math.ceil(retry))} if retry is not None else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    # exc.headers carries a 405's Allow (RFC 9110 requires it).
    return JSONResponse({"error": code, "message": message}, status_code=exc.status_code,
                        headers=exc.headers)


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("database unreachable: %s", type(exc).__name__)
    problem = errors.unavailable()
    return JSONResponse(problem.body(), status_code=problem.status)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up before its body arrived: nothing was read, so nothing was written.
    # Not our error (no 500, no traceback); 499 is nginx's "client closed request".
    return Response(status_code=CLIENT_CLOSED)


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Problems and starlette's own errors as the contract's JSON; an unreachable database
    as 503 (its transaction never committed, so nothing was written)."""
    return {
        errors.Problem: _problem,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        **{exc: _database_down for exc in DB_DOWN},
    }


async def checkout_for(request: Request, account_id: str) -> Outcome:
    """A checkout session for the account from the request body (backend or browser)."""
    body = decode_body(CheckoutRequest, await read_body(request))
    answer, replayed = await resources(request).checkout.create(
        account_id, body, request_hash("checkout", body))
    return Outcome(answer, replayed)
