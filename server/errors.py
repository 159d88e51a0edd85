"""Error codes and WebSocket close codes, as data.

The HTTP table mirrors ../shared/API.md "Errors"; the close-code table has a twin in
client_js/src/codes.js, which decides from it whether to reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """An error answered to the caller as `{"error": code, "message": ..., **details}`."""

    def __init__(self, http_status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = http_status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


def invalid_json(message: str = "request body is not valid JSON") -> ApiError:
    return ApiError(400, "invalid_json", message)


def unauthorized(message: str = "missing or invalid credentials") -> ApiError:
    return ApiError(401, "unauthorized", message)


def insufficient_credits(required: int, available: int) -> ApiError:
    return ApiError(
        402,
        "insufficient_credits",
        f"{required} credits required, {available} available",
        required=required,
        available=available,
    )


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def idempotency_conflict() -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        "this idempotency_key was already used with a different request body",
    )


def hold_not_active(status: str) -> ApiError:
    return ApiError(409, "hold_not_active", f"hold is {status}, not active", status=status)


def payload_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body is over {limit} bytes", limit=limit)


def invalid_request(detail: str) -> ApiError:
    return ApiError(422, "invalid_request", f"invalid request: {detail}", detail=detail)


def rate_limited(retry_after: float) -> ApiError:
    return ApiError(429, "rate_limited", "too many requests", retry_after=retry_after)


def unavailable(message: str = "database unreachable; nothing was written") -> ApiError:
    return ApiError(503, "unavailable", message)


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

CLOSE_CODES: tuple[CloseCode, ...] = (
    CLOSE_NORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_SERVICE_RESTART,
    CLOSE_BAD_REQUEST,
    CLOSE_UNAUTHORIZED,
    CLOSE_FORBIDDEN,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_TOO_MANY,
    CLOSE_TOO_SLOW,
    CLOSE_INTERNAL,
)
