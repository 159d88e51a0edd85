"""What the calls answer, as typed, immutable structs decoded from the API's JSON.

Fields the server adds later are ignored, so an older SDK keeps working against a newer
server. `replayed` is True when the answer is the replay of an earlier call with the same
idempotency key (nothing new was written).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec


class _Model(msgspec.Struct, kw_only=True):
    pass


class Account(_Model):
    """One wallet: `available` = `balance` - `held`; `version` grows with every change."""

    account_id: str
    balance: int
    held: int
    available: int
    version: int
    purchased: int = 0
    used: int = 0
    updated_at: datetime | None = None
    plan: str | None = None
    period_end: datetime | None = None
    low: bool = False


class Transaction(_Model):
    """A ledger row; `amount` is signed (usage is negative)."""

    id: int
    account_id: str
    kind: str
    amount: int
    balance_after: int
    version: int
    created_at: datetime
    reason: str | None = None
    metadata: dict[str, Any] | None = None
    hold_id: str | None = None


class Hold(_Model):
    """Credits reserved for work in progress: `status` is active, captured, released or
    expired."""

    id: str
    account_id: str
    amount: int
    status: str
    expires_at: datetime
    captured: int | None = None
    reason: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    operation: str | None = None
    quantity: int | None = None


class Movement(_Model):
    """A debit, credit, adjustment or charge: its transaction and the account after it."""

    transaction: Transaction
    account: Account
    replayed: bool = False


class HoldResult(_Model):
    """A hold placed or released, and the account after it."""

    hold: Hold
    account: Account
    replayed: bool = False


class Capture(_Model):
    """A captured hold: the usage transaction, the hold and the account after it."""

    transaction: Transaction
    hold: Hold
    account: Account
    replayed: bool = False


class AccountResult(_Model):
    """A change of an account's settings or plan, and the account after it."""

    account: Account
    replayed: bool = False


class TransactionPage(_Model):
    """One page of history, newest first; `next` is the cursor of the page after it."""

    transactions: list[Transaction]
    next: str | None = None


class UsageGroup(_Model):
    """Credits spent (`amount`, positive) in `count` usage transactions, by reason or day."""

    key: str | None
    amount: int
    count: int
    reason: str | None = None  # group_by="day,reason": this day's group's reason


class Usage(_Model):
    groups: list[UsageGroup]


class Grant(_Model):
    """A lot of credits: what is left of it, its priority and expiry."""

    id: int
    kind: str
    amount: int
    remaining: int
    priority: int
    expires_at: datetime | None = None
    created_at: datetime | None = None


class Grants(_Model):
    grants: list[Grant]


class Holds(_Model):
    holds: list[Hold]


class LimitUse(_Model):
    limit: int
    used: int


class PlanSubscription(_Model):
    """The provider subscription a plan follows; `cancel_at`: when a cancellation at the
    period's end removes the plan."""

    provider: str
    id: str
    status: str
    cancel_at: datetime | None = None


class PlanStatus(_Model):
    """The account's plan, its period, the allowance left and each limit's use."""

    plan: str | None
    period: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    allowance: int | None = None
    allowance_remaining: int | None = None
    rollover: int | None = None
    status: Literal["active", "past_due"] | None = None
    subscription: PlanSubscription | None = None
    limits: dict[str, LimitUse] = {}


class CheckResult(_Model):
    """What a charge or debit would answer now (nothing written): `allowed`, its `cost`,
    and when refused the `error` code with its details."""

    allowed: bool
    cost: int | None = None
    available: int | None = None
    error: str | None = None
    required: int | None = None
    operation: str | None = None  # a plan's limit on it; None with `period`: the spend cap
    period: str | None = None
    limit: int | None = None
    used: int | None = None
    resets_at: datetime | None = None


class Token(_Model):
    """A browser token and its expiry, in Unix seconds."""

    token: str
    expires_at: int


class CheckoutSession(_Model):
    """Where to send the buyer: the provider's `url`; `credits` they will receive."""

    url: str
    provider: str
    session_id: str
    credits: int
    amount: int | None  # None for a plan: the provider's price sets it
    currency: str | None
    package: str | None = None
    plan: str | None = None
    replayed: bool = False


class AutoTopUp(_Model):
    """An auto top-up: `monthly_limit` and `spent_this_month` in minor units of `currency`;
    `paused_until` set while the monthly limit holds it back."""

    package: str
    threshold: int
    stripe_customer: str
    stripe_payment_method: str
    enabled: bool = True
    target: int | None = None
    monthly_limit: int | None = None
    currency: str | None = None
    spent_this_month: int = 0
    paused_until: datetime | None = None


class SpendLimit(_Model):
    """A spend cap to set: at most `amount` credits spent (debits, charges, captures) and
    held together per UTC calendar `period`."""

    amount: int
    period: Literal["hour", "day", "month"]


class SpendCap(_Model):
    """The account's spend cap, and its current window: `used` spent, `held` reserved by
    active holds (both count against `amount`), until `resets_at`."""

    amount: int
    period: str
    used: int
    held: int
    resets_at: datetime


class Limits(_Model):
    spend: SpendCap | None = None  # None: no spend cap


class LimitsResult(_Model):
    limits: Limits


class AccountSettings(_Model):
    """The account's own low-balance threshold (None: none), the one in force and where it
    comes from (account, plan, catalog), its auto top-up (None: off) and its spend cap."""

    low_balance: int | None = None
    threshold: int | None = None
    threshold_from: str | None = None
    auto_top_up: AutoTopUp | None = None
    limits: Limits = msgspec.field(default_factory=Limits)


class AutoTopUpResult(_Model):
    auto_top_up: AutoTopUp | None


class Attempt(_Model):
    attempt: int
    at: datetime
    status: int | None = None
    latency_ms: int | None = None
    error: str | None = None


class Event(_Model):
    """An app webhook: its `type`, `data`, delivery `status` and attempts."""

    id: int
    webhook_id: str
    type: str
    data: dict[str, Any]
    status: str
    attempts: int
    created_at: datetime
    account_id: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    attempt_log: list[Attempt] = []


class EventPage(_Model):
    events: list[Event]
    next: int | None = None


class EventRetry(_Model):
    id: int
    webhook_id: str
    status: str


class WebhookEvent(_Model):
    """A verified app webhook: `id` (the webhook-id header, the same on every redelivery:
    dedupe on it), `type`, `timestamp` and `data`."""

    id: str
    type: str
    timestamp: datetime
    data: dict[str, Any]


class AccountPage(_Model):
    accounts: list[Account]
    next: str | None = None


class Resolution(_Model):
    """How a payment under review was settled: `credit` or `dismiss` by an operator, or
    `fulfilled` by a later event of the payment."""

    action: str
    at: datetime
    account_id: str | None = None
    credits: int | None = None
    note: str | None = None
    actor: str | None = None
    transaction_id: int | None = None


class Review(_Model):
    id: int
    event_id: str
    event_type: str
    problem: str
    received_at: datetime
    resolution: Resolution | None = None


class Payment(_Model):
    """A provider's payment: credited, reversed, disputed, or (with `review`) needs_review /
    resolved. Under review, `credits` is what the catalog would credit (None: unpriced)."""

    status: str
    provider: str
    created_at: datetime
    payment_id: str | None = None
    account_id: str | None = None
    credits: int | None = None
    amount_paid: int | None = None
    currency: str | None = None
    credits_reversed: int = 0
    credits_disputed: int = 0
    review: Review | None = None


class PaymentPage(_Model):
    payments: list[Payment]
    next: str | None = None


class ResolveResult(_Model):
    payment: Payment
    account: Account | None = None
    transaction: Transaction | None = None
    replayed: bool = False


class AuditEntry(_Model):
    """One operator action, written with the change it made."""

    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    account_id: str | None = None
    transaction_id: int | None = None
    detail: dict[str, Any] = {}


class AuditPage(_Model):
    entries: list[AuditEntry]
    next: int | None = None
