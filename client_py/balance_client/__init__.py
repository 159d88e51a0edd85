"""balance-server's backend SDK: `AsyncBalance` and `Balance` (the same calls, sync), typed
results and errors, reservations that charge only for work that succeeded, and the
verification of app webhooks."""

from balance_client._async_client import AsyncBalance, AsyncReservation
from balance_client._sync_client import Balance, Reservation
from balance_client.errors import (
    BalanceError,
    Forbidden,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    LimitReached,
    NotFound,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    Unauthorized,
    Unavailable,
    WebhookVerificationError,
)
from balance_client.models import (
    Account,
    AccountResult,
    Capture,
    CheckoutSession,
    CheckResult,
    Event,
    Grant,
    Hold,
    HoldResult,
    Limits,
    LimitsResult,
    Movement,
    PlanStatus,
    SpendCap,
    SpendLimit,
    Token,
    Transaction,
    TransactionPage,
    WebhookEvent,
)
from balance_client.webhooks import verify_webhook

__all__ = [
    "Account", "AccountResult", "AsyncBalance", "AsyncReservation", "Balance", "BalanceError",
    "Capture", "CheckResult", "CheckoutSession", "Event", "Forbidden", "Grant", "Hold",
    "HoldNotActive", "HoldResult", "IdempotencyConflict", "InsufficientCredits",
    "InvalidRequest", "LimitReached", "Limits", "LimitsResult", "Movement", "NotFound",
    "OutcomeUnknown", "PlanStatus", "ProviderUnavailable", "RateLimited", "Reservation",
    "SpendCap", "SpendLimit", "Token", "Transaction",
    "TransactionPage", "Unauthorized", "Unavailable", "WebhookEvent",
    "WebhookVerificationError", "verify_webhook",
]
