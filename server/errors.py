"""Error codes and WebSocket close codes, as data.

`Problem` is what every layer raises: a code from the contract's table, a message and
details, and no HTTP status. The HTTP layer alone turns a code into a status, through
`HTTP_STATUS` (the table of ../shared/API.md "Errors"). The close-code table has a twin in
client_js/src/codes.js, which decides from it whether to reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HTTP_STATUS: dict[str, int] = {
    "invalid_json": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "insufficient_credits": 402,
    "limit_reached": 402,
    "not_found": 404,
    "method_not_allowed": 405,
    "idempotency_conflict": 409,
    "hold_not_active": 409,
    "payload_too_large": 413,
    "rate_limited": 429,
    "invalid_request": 422,
    "internal_error": 500,
    "provider_unavailable": 502,
    "unavailable": 503,
    "outcome_unknown": 503,
}


class Problem(Exception):
    """An error answered as `{"error": code, "message": ..., **details}`."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


def invalid_json(message: str = "request body is not valid JSON") -> Problem:
    return Problem("invalid_json", message)


def unauthorized(message: str = "missing or invalid credentials") -> Problem:
    return Problem("unauthorized", message)


def forbidden(scope: str, key_name: str, key_scope: str) -> Problem:
    return Problem("forbidden", f"the service key {key_name!r} has scope {key_scope!r}; this "
                   f"operation needs {scope!r}", scope=scope)


def insufficient_credits(required: int, available: int) -> Problem:
    return Problem(
        "insufficient_credits",
        f"{required} credits required, {available} available",
        required=required,
        available=available,
    )


def limit_reached(operation: str, limit: int, used: int, resets_at: str) -> Problem:
    return Problem(
        "limit_reached",
        f"{operation}: the plan allows {limit} per period, {used} used; resets at {resets_at}",
        operation=operation, limit=limit, used=used, resets_at=resets_at,
    )


def spend_limit_reached(limit: int, used: int, resets_at: str, period: str) -> Problem:
    """The account's spend cap: no `operation`, which a plan's limit_reached names."""
    return Problem(
        "limit_reached",
        f"the account's spend cap allows {limit} credits per {period}, {used} spent or held; "
        f"resets at {resets_at}",
        limit=limit, used=used, resets_at=resets_at, period=period,
    )


def not_found(message: str = "not found") -> Problem:
    return Problem("not_found", message)


def idempotency_conflict() -> Problem:
    return Problem(
        "idempotency_conflict",
        "this idempotency_key was already used with a different request body",
    )


def hold_not_active(status: str) -> Problem:
    return Problem("hold_not_active", f"hold is {status}, not active", status=status)


def payload_too_large(limit: int) -> Problem:
    return Problem("payload_too_large", f"request body is over {limit} bytes", limit=limit)


def rate_limited(retry_after: float) -> Problem:
    return Problem("rate_limited", f"too many requests; retry in {retry_after:g} s",
                   retry_after=retry_after)


def invalid_request(detail: str) -> Problem:
    return Problem("invalid_request", f"invalid request: {detail}", detail=detail)


def unavailable(message: str = "database unreachable; nothing was written") -> Problem:
    return Problem("unavailable", message)


def internal_error(message: str = "unexpected server error; retry") -> Problem:
    return Problem("internal_error", message)


def provider_unavailable(provider: str, detail: str) -> Problem:
    return Problem("provider_unavailable",
                   f"{provider}'s API failed ({detail}); nothing was written", provider=provider)


def outcome_unknown() -> Problem:
    return Problem(
        "outcome_unknown",
        "the database went away after the request was sent: it may have committed; "
        "retry with the same idempotency_key (a capture or release: read the hold's status "
        "in the answer to a retry)",
    )


@dataclass(frozen=True, slots=True)
class CloseCode:
    code: int
    name: str
    reconnect: bool  # False: the client must not retry with the same credentials
    meaning: str


CLOSE_NORMAL = CloseCode(1000, "normal", False, "closed by the client or after a terminal error")
CLOSE_GOING_AWAY = CloseCode(1001, "going_away", True, "server shutting down; reconnect")
CLOSE_SERVICE_RESTART = CloseCode(1012, "service_restart", True, "server draining; reconnect")
CLOSE_BAD_REQUEST = CloseCode(4400, "bad_request", True, "protocol violation")
CLOSE_UNAUTHORIZED = CloseCode(4401, "unauthorized", False, "bad or expired token")
CLOSE_FORBIDDEN = CloseCode(4403, "forbidden", False, "origin not allowed")
CLOSE_AUTH_TIMEOUT = CloseCode(4408, "auth_timeout", True, "no auth frame within 10 s")
CLOSE_TOO_MANY = CloseCode(4429, "too_many_connections", True, "too many sockets for account")
CLOSE_TOO_SLOW = CloseCode(4509, "too_slow", True, "socket could not keep up; resync")
CLOSE_INTERNAL = CloseCode(4500, "internal_error", True, "unexpected server error")
