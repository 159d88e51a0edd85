"""The errors a call can raise: one class per error code of the API, with its details.

Catch `InsufficientCredits` to show a purchase prompt, `LimitReached` for a plan's cap,
`OutcomeUnknown` to retry later with the same key. Every class is a `BalanceError`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class BalanceError(Exception):
    """An answer that is not a success: `status` (0 when no answer came), the API's error
    `code` and `message`, the whole error `body`, and the server's `request_id`."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}
        self.request_id = request_id


class InsufficientCredits(BalanceError):
    """402: `available` credits, `required` ones."""

    @property
    def required(self) -> int:
        return int(self.body.get("required", 0))

    @property
    def available(self) -> int:
        return int(self.body.get("available", 0))


class LimitReached(BalanceError):
    """402: the plan allows `limit` units of `operation` per period, `used` are spent, and
    the period ends at `resets_at`. Without an `operation`, the account's spend cap: `limit`
    credits per `period`, `used` spent and held."""

    @property
    def operation(self) -> str | None:
        return self.body.get("operation")

    @property
    def period(self) -> str | None:
        """The spend cap's period (hour, day, month); None for a plan's limit."""
        return self.body.get("period")

    @property
    def limit(self) -> int:
        return int(self.body.get("limit", 0))

    @property
    def used(self) -> int:
        return int(self.body.get("used", 0))

    @property
    def resets_at(self) -> datetime | None:
        value = self.body.get("resets_at")
        return datetime.fromisoformat(value) if isinstance(value, str) else None


class IdempotencyConflict(BalanceError):
    """409: the key was used before with another body (another amount, another account's
    request...). Nothing was written by this call."""


class HoldNotActive(BalanceError):
    """409: the hold is `hold_status` (captured, released or expired), not active."""

    @property
    def hold_status(self) -> str | None:
        return self.body.get("status")


class NotFound(BalanceError):
    """404: no such hold, event or route."""


class InvalidRequest(BalanceError):
    """400, 413 or 422: the request breaks a rule; `detail` names the field."""

    @property
    def detail(self) -> str | None:
        return self.body.get("detail")


class Unauthorized(BalanceError):
    """401: the service key is missing or wrong."""


class Forbidden(BalanceError):
    """403: the service key's scope does not allow this call; `scope` is the one it needs."""

    @property
    def scope(self) -> str | None:
        return self.body.get("scope")


class RateLimited(BalanceError):
    """429: try again in `retry_after` seconds."""

    @property
    def retry_after(self) -> float:
        return float(self.body.get("retry_after", 1))


class ProviderUnavailable(BalanceError):
    """502: the payment provider failed; nothing was created."""


class Unavailable(BalanceError):
    """The server could not be reached (or its database could not) until the deadline, and
    no attempt got far enough to write anything: nothing was written."""


class OutcomeUnknown(BalanceError):
    """The deadline ran out after an attempt that may have committed (a cut connection, a
    timeout, or the server's own `outcome_unknown`). Call again with the same `key`: that
    answers the committed result, or performs the call once."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None,
                 request_id: str | None = None, *, key: str | None = None) -> None:
        super().__init__(status, code, message, body, request_id)
        self.key = key


class WebhookVerificationError(Exception):
    """An app webhook whose signature, timestamp or body does not verify."""


BY_CODE: dict[str, type[BalanceError]] = {
    "insufficient_credits": InsufficientCredits,
    "limit_reached": LimitReached,
    "idempotency_conflict": IdempotencyConflict,
    "hold_not_active": HoldNotActive,
    "not_found": NotFound,
    "invalid_request": InvalidRequest,
    "invalid_json": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "rate_limited": RateLimited,
    "provider_unavailable": ProviderUnavailable,
    "unavailable": Unavailable,
    "outcome_unknown": OutcomeUnknown,
}
