"""What every API operation answers, as msgspec Structs: the success bodies and one error
body per code of errors.HTTP_STATUS.

They describe; they do not encode. Most answers are built as JSON inside PostgreSQL
(schema.sql "JSON shapes of API.md": balance__account_json, balance__tx_json,
balance__hold_json, and the functions each route calls), so these types are the contract
/openapi.json states and the tests hold those functions to (tests/api/test_openapi.py
validates real answers against the document). A field always present is required; one
that may be null says so. The Structs forbid unknown fields, so a field a function starts
to emit fails the tests until it is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from server.catalog import Alerts, Catalog, Credits, Name, Package, PayAsYouGo, Plan
from server.messages import SpendPeriod, Timestamp


def _(text: str) -> msgspec.Meta:
    """A field's description in the generated docs."""
    return msgspec.Meta(description=text)


@dataclass(frozen=True, slots=True)
class Component:
    """A named schema that msgspec cannot name itself: a map, or one of several untagged
    Structs."""

    name: str
    types: tuple[Any, ...]  # one: its schema; several: one of theirs (`oneOf`)
    description: str


# Timestamps are RFC 3339 in UTC with microseconds (schema.sql balance__ts), `format:
# date-time`. These three Literals are history.KINDS, config.EVENT_TYPES and outbox.STATUSES
# (tests/api/test_openapi.py checks that they agree).
Kind = Literal["grant", "purchase", "usage", "refund", "reversal", "adjustment", "expiry",
               "allowance"]
EventType = Literal["transaction.created", "balance.low", "balance.depleted",
                    "balance.recovered", "purchase.completed", "purchase.reversed",
                    "payment.needs_review", "hold.expired", "plan.renewed",
                    "plan.past_due", "plan.canceled", "top_up.requested", "top_up.failed",
                    "top_up.limit_reached"]
EventStatus = Literal["pending", "delivered", "failed"]
Metadata = dict[str, Any]
Prices = Component("Prices", (dict[Name, Credits],),
                   "operation -> credits per unit (the catalog's [prices])")
# GET /v1/catalog answers the catalog's own Structs (catalog.to_json), every field written,
# defaults too: all of their fields are required in an answer.
CATALOG = (Catalog, Package, PayAsYouGo, Plan, Alerts)

# ---------------------------------------------------------------- ledger objects


class Account(msgspec.Struct, forbid_unknown_fields=True):
    """One wallet. An account never mentioned reads as it would be born (welcome credits,
    version 0 or 1); reading it creates nothing."""

    account_id: Annotated[str, _("the app's id for the wallet (a user or a team)")]
    balance: Annotated[int, _("credits owned; below 0 only after a reversal (a debt)")]
    held: Annotated[int, _("credits reserved by active holds")]
    available: Annotated[int, _("balance - held: what a debit or hold may take")]
    version: Annotated[int, _("+1 on every committed change; keep the highest seen")]
    purchased: Annotated[int, _("credits bought, all time")]
    used: Annotated[int, _("credits spent (debits, charges, captures), less refunds, all time")]
    updated_at: Annotated[Timestamp, _("the last change")]
    plan: Annotated[str | None, _("the catalog plan assigned, or null")]
    period_end: Annotated[Timestamp | None, _("when the plan's current period ends (the next "
                                              "allowance); null without a plan")]
    low: Annotated[bool, _("available is below the account's low_balance threshold (or <= 0)")]


class Transaction(msgspec.Struct, forbid_unknown_fields=True):
    """One append-only ledger row; per account, balance == sum(amount)."""

    id: Annotated[int, _("ascending in time; a history page's cursor")]
    account_id: str
    kind: Kind
    amount: Annotated[int, _("signed: positive adds credits, negative takes them")]
    balance_after: Annotated[int, _("the account's balance once this row applied")]
    version: Annotated[int, _("the account's version this row made")]
    reason: Annotated[str | None, _("as the request said (a charge: its operation)")]
    metadata: Annotated[Metadata | None, _("as the request sent it; a charge adds operation, "
                                           "quantity and unit_cost")]
    hold_id: Annotated[UUID | None, _("the hold a capture (or its expiry) resolved")]
    created_at: Timestamp


class Hold(msgspec.Struct, forbid_unknown_fields=True):
    """Credits reserved until captured, released or expired."""

    id: UUID
    account_id: str
    amount: Annotated[int, _("credits reserved")]
    status: Literal["active", "captured", "released", "expired"]
    captured: Annotated[int | None, _("credits a capture spent; null unless captured")]
    reason: str | None
    metadata: Annotated[Metadata | None, _("the request's, merged with the capture's")]
    expires_at: Annotated[Timestamp, _("an active hold is released by the server then")]
    created_at: Timestamp
    # A hold placed for a priced operation; null for a hold of an amount.
    operation: Annotated[str | None, _("the priced operation the hold is for, if any")] = None
    quantity: Annotated[int | None, _("units of that operation")] = None


class Grant(msgspec.Struct, forbid_unknown_fields=True):
    """Credits that arrived together, spent in order: lowest priority number first, then
    soonest expiry (none last), then oldest."""

    id: int
    kind: Annotated[Kind, _("the movement that opened it")]
    amount: Annotated[int, _("credits it opened with")]
    remaining: Annotated[int, _("credits left to spend (at least 1: spent grants are not "
                                "listed)")]
    priority: Annotated[int, msgspec.Meta(ge=0, le=100)]
    expires_at: Annotated[Timestamp | None, _("null: never expires")]
    created_at: Timestamp


# ---------------------------------------------------------------- movement answers


class TransactionResult(msgspec.Struct, forbid_unknown_fields=True):
    """A debit, credit, adjustment or charge: its ledger row and the account after it (a
    replay with the same idempotency_key answers the same body)."""

    transaction: Transaction
    account: Account


class HoldResult(msgspec.Struct, forbid_unknown_fields=True):
    """A hold placed or released, and the account after it."""

    hold: Hold
    account: Account


class CaptureResult(msgspec.Struct, forbid_unknown_fields=True):
    """A capture: the usage row it wrote, the captured hold, the account after it."""

    transaction: Transaction
    hold: Hold
    account: Account


class AccountResult(msgspec.Struct, forbid_unknown_fields=True):
    """The account after a change of plan."""

    account: Account


class AlertsResult(msgspec.Struct, forbid_unknown_fields=True):
    account: Account
    low_balance: Annotated[int | None, _("the account's own threshold; null: its plan's, "
                                         "else the catalog's")]


class AutoTopUp(msgspec.Struct, forbid_unknown_fields=True):
    package: str
    threshold: Annotated[int, _("a top-up starts when available falls below this")]
    target: Annotated[int | None, _("a top-up buys as many packages as bring available up "
                                    "to this; null: one package")]
    monthly_limit: Annotated[int | None, _("the most this month's top-ups may cost, in minor "
                                           "units of `currency`; null: no limit")]
    currency: Annotated[str | None, _("what the package is charged in (USD if priced in "
                                      "it); null: set before monthly limits existed")]
    spent_this_month: Annotated[int, _("what this UTC month's top-ups cost so far (created or "
                                       "paid), in minor units of `currency`")]
    paused_until: Annotated[Timestamp | None, _(
        "the monthly limit stopped a top-up: none starts before this (the next month); null: "
        "not paused")]
    stripe_customer: str
    stripe_payment_method: str
    enabled: bool


class SpendCap(msgspec.Struct, forbid_unknown_fields=True):
    """The account's spend cap and where its current window stands."""

    amount: Annotated[int, _("credits that may be spent and held together per period")]
    period: Annotated[SpendPeriod, _("the UTC calendar hour, day or month")]
    used: Annotated[int, _("credits spent (debits, charges, captures) in the current window")]
    held: Annotated[int, _("credits the account's active holds reserve; they count as spent")]
    resets_at: Annotated[Timestamp, _("when the current window ends")]


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    spend: Annotated[SpendCap | None, _("null: no spend cap")]


class LimitsResult(msgspec.Struct, forbid_unknown_fields=True):
    """The account's limits."""

    limits: Limits


class AccountSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The account's alert, auto top-up and spend cap settings."""

    low_balance: Annotated[int | None, _("the account's own threshold; null: none set")]
    threshold: Annotated[int | None, _("the threshold in force: its own, else its plan's, "
                                       "else the catalog's; null: no alert")]
    threshold_from: Literal["account", "plan", "catalog"] | None
    auto_top_up: AutoTopUp | None
    limits: Limits


class AutoTopUpResult(msgspec.Struct, forbid_unknown_fields=True):
    auto_top_up: Annotated[AutoTopUp | None, _("null: turned off")]


# ---------------------------------------------------------------- reads


class TransactionPage(msgspec.Struct, forbid_unknown_fields=True):
    """A page of history, newest first."""

    transactions: list[Transaction]
    next: Annotated[
        Annotated[str, msgspec.Meta(pattern="^[0-9]+$")] | None,
        _("the `before` of the next page (a transaction id, as a string); null: the last "
          "page")]


class UsageGroup(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, _("the reason, or the UTC day as YYYY-MM-DD")]
    amount: Annotated[int, _("credits spent")]
    count: Annotated[int, _("usage transactions")]
    reason: Annotated[str | UnsetType, _("group_by=day,reason: the reason (operation) of "
                                         "this day's group")] = UNSET


class Usage(msgspec.Struct, forbid_unknown_fields=True):
    """Spending (usage transactions) grouped, in key order."""

    groups: list[UsageGroup]


class GrantList(msgspec.Struct, forbid_unknown_fields=True):
    """The account's open grants, in the order they are spent."""

    grants: list[Grant]


class HoldList(msgspec.Struct, forbid_unknown_fields=True):
    """The account's active holds, soonest to expire first."""

    holds: list[Hold]


class LimitUse(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, _("units allowed per period")]
    used: Annotated[int, _("units charged this period")]


class PlanSubscription(msgspec.Struct, forbid_unknown_fields=True):
    provider: Literal["stripe", "dodo"]
    id: Annotated[str, _("the provider's subscription id")]
    status: Literal["incomplete", "active", "past_due", "canceled"]
    cancel_at: Annotated[Timestamp | None,
                         _("when a cancellation at the period's end removes the plan")]


class PlanDashboard(msgspec.Struct, forbid_unknown_fields=True):
    """The plan, its period and what is left of it; without a plan every field is null or
    0 and `limits` is empty."""

    plan: str | None
    period: Literal["month", "week", "day"] | None
    period_start: Timestamp | None
    period_end: Timestamp | None
    allowance: Annotated[int, _("credits granted each period")]
    allowance_remaining: Annotated[int, _("of this period's allowance (and rollover), unspent")]
    rollover: Annotated[int, _("at most this much unused allowance carries into the next "
                               "period")]
    status: Annotated[Literal["active", "past_due"] | None,
                      _("past_due: the subscription's renewal failed; no allowance comes "
                        "until it is paid (null without a plan)")]
    subscription: Annotated[PlanSubscription | None,
                            _("the provider subscription the plan follows (null: the backend "
                              "assigned it)")]
    limits: Annotated[dict[str, LimitUse], _("per limited operation")]


class CheckAllowed(msgspec.Struct, forbid_unknown_fields=True):
    """The charge or debit would succeed now."""

    allowed: Literal[True]
    cost: Annotated[int, _("credits it would take (at the plan's price, if any)")]
    available: int


class CheckInsufficientCredits(msgspec.Struct, forbid_unknown_fields=True):
    """It would be refused 402 insufficient_credits."""

    allowed: Literal[False]
    cost: int
    available: int
    error: Literal["insufficient_credits"]
    required: Annotated[int, _("the cost again, as the 402 would say it")]


class CheckLimitReached(msgspec.Struct, forbid_unknown_fields=True):
    """It would be refused 402 limit_reached (the plan's per-period cap)."""

    allowed: Literal[False]
    cost: int
    available: int
    error: Literal["limit_reached"]
    operation: str
    limit: int
    used: int
    resets_at: Timestamp


class CheckSpendLimitReached(msgspec.Struct, forbid_unknown_fields=True):
    """It would be refused 402 limit_reached by the account's spend cap (no `operation`)."""

    allowed: Literal[False]
    cost: int
    available: int
    error: Literal["limit_reached"]
    limit: Annotated[int, _("the spend cap: credits per period")]
    used: Annotated[int, _("credits spent and held in the current window")]
    period: SpendPeriod
    resets_at: Timestamp


CheckResult = Component(
    "CheckResult",
    (CheckAllowed, CheckInsufficientCredits, CheckLimitReached, CheckSpendLimitReached),
    "What a charge or debit would answer now: allowed, or the refusal with its details")


class Token(msgspec.Struct, forbid_unknown_fields=True):
    token: Annotated[str, _("an HS256 JWT for /v1/me* and /v1/ws")]
    expires_at: Annotated[int, _("Unix seconds (not a timestamp string, unlike the rest)")]


class EventAttempt(msgspec.Struct, forbid_unknown_fields=True):
    attempt: int
    at: Timestamp
    status: Annotated[int | None, _("the receiver's HTTP status; null when none came")]
    latency_ms: int | None
    error: Annotated[str | None, _("why it failed, when it did")]


class Event(msgspec.Struct, forbid_unknown_fields=True):
    """An app webhook (outbox row) and its delivery attempts."""

    id: int
    webhook_id: Annotated[str, _("the Standard Webhooks id, the same on every attempt")]
    type: EventType
    account_id: Annotated[str | None, _("null for payment.needs_review")]
    data: Annotated[Metadata, _("the webhook body's `data`")]
    status: EventStatus
    attempts: int
    next_attempt_at: Annotated[Timestamp | None, _("null unless pending")]
    created_at: Timestamp
    delivered_at: Timestamp | None
    attempt_log: list[EventAttempt]


class EventPage(msgspec.Struct, forbid_unknown_fields=True):
    """Events, newest first."""

    events: list[Event]
    next: Annotated[int | None, _("the `before` of the next page (an event id, a number); "
                                  "null: the last page")]


class EventRetry(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    webhook_id: str
    status: Literal["pending"]


class CheckoutSession(msgspec.Struct, forbid_unknown_fields=True):
    """A provider's hosted checkout; send the buyer to `url`. A replay of the
    idempotency_key answers the same session."""

    url: str
    provider: Literal["stripe", "dodo"]
    session_id: str
    credits: Annotated[int, _("what the payment will buy, from the catalog (a plan: the "
                              "allowance of each paid period)")]
    amount: Annotated[int | None, _("the price, in ISO 4217 minor units of `currency` (null "
                                    "for a plan: the provider's price sets it)")]
    currency: Annotated[str, msgspec.Meta(pattern="^[a-z]{3}$")] | None
    package: Annotated[str | None, _("null for pay-as-you-go or a plan")]
    plan: Annotated[str | None, _("the plan whose subscription this checkout starts")] = None


class Me(msgspec.Struct, forbid_unknown_fields=True):
    """The token's account and its latest 20 transactions, newest first."""

    accounts: Annotated[list[Account], msgspec.Meta(min_length=1, max_length=1)]
    transactions: Annotated[list[Transaction], msgspec.Meta(max_length=20)]


# ---------------------------------------------------------------- operator objects


class AccountPage(msgspec.Struct, forbid_unknown_fields=True):
    """Accounts whose id starts with the prefix, the last changed first."""

    accounts: list[Account]
    next: Annotated[str | None, _("the `cursor` of the next page; null: the last page")]


class Resolution(msgspec.Struct, forbid_unknown_fields=True):
    """How a payment under review was resolved."""

    action: Annotated[Literal["credit", "dismiss", "fulfilled"],
                      _("by an operator (credit, dismiss), or `fulfilled`: a later event of "
                        "the payment credited it")]
    account_id: Annotated[str | None, _("credited to")]
    credits: Annotated[int | None, _("credited")]
    note: Annotated[str | None, _("the operator's note")]
    actor: Annotated[str | None, _("the service key that resolved it (console:<name> from "
                                   "the console)")]
    at: Timestamp
    transaction_id: Annotated[int | None, _("the purchase transaction, when credited")]


class Review(msgspec.Struct, forbid_unknown_fields=True):
    """The paid event that could not be credited as it came."""

    id: Annotated[int, _("the review's id (POST /v1/payments/reviews/{id}/credit or /dismiss)")]
    event_id: str
    event_type: str
    problem: Annotated[str, _("why it was not credited")]
    received_at: Timestamp
    resolution: Resolution | None


class Payment(msgspec.Struct, forbid_unknown_fields=True):
    """A payment a provider reported: credited (and what happened to it since), or under
    review."""

    status: Literal["credited", "needs_review", "reversed", "disputed", "resolved"]
    provider: Literal["stripe", "dodo"]
    payment_id: Annotated[str | None, _("the provider's payment id; null when the event "
                                        "named none")]
    account_id: Annotated[str | None, _("whose; null when the event named no valid one")]
    credits: Annotated[int | None, _("credited; under review: what the catalog would credit "
                                     "for the money received, null when it cannot price it")]
    amount_paid: Annotated[int | None, _("minor units of currency")]
    currency: str | None
    credits_reversed: Annotated[int, _("taken back by refunds")]
    credits_disputed: Annotated[int, _("taken back by disputes, now")]
    created_at: Timestamp
    review: Review | None


class PaymentPage(msgspec.Struct, forbid_unknown_fields=True):
    """Payments in one status, newest first."""

    payments: list[Payment]
    next: Annotated[str | None, _("the `cursor` of the next page; null: the last page")]


class ResolveResult(msgspec.Struct, forbid_unknown_fields=True):
    payment: Payment
    account: Annotated[Account | None, _("the account credited, as it is now; null when "
                                         "dismissed")]
    transaction: Annotated[Transaction | None, _("the purchase credited; null when dismissed")]


class AuditEntry(msgspec.Struct, forbid_unknown_fields=True):
    """One operator action, written with the change it made."""

    id: int
    at: Timestamp
    actor: Annotated[str, _("the service key's name; console:<name> from the console")]
    action: Literal["adjust", "credit", "plan", "alerts", "limits", "auto_top_up", "event_retry",
                    "review_resolve", "hold_release"]
    account_id: str | None
    subject: Annotated[str, _("what was acted on: the account, event, hold or review id")]
    transaction_id: int | None
    detail: Metadata


class AuditPage(msgspec.Struct, forbid_unknown_fields=True):
    """The audit log, newest first."""

    entries: list[AuditEntry]
    next: Annotated[int | None, _("the `before` of the next page (an entry id); null: the "
                                  "last page")]


class WebhookAck(msgspec.Struct):
    """What a payment provider is answered (it reads only the status). `result` says what
    the event did; the other fields come with some results."""

    received: Literal[True]
    result: Literal["fulfilled", "duplicate", "reversed", "nothing_to_reverse",
                    "dispute_taken", "dispute_returned", "nothing_to_change", "pending",
                    "ignored", "needs_review", "payment_failed"]
    payment_id: str | UnsetType = UNSET
    account_id: str | UnsetType = UNSET
    account: Account | UnsetType = UNSET
    transaction: Transaction | UnsetType | None = UNSET
    reason: Annotated[str | UnsetType, _("why it was ignored")] = UNSET
    problem: Annotated[str | UnsetType, _("why it needs review")] = UNSET
    credits_reversed: int | UnsetType = UNSET
    credits_reversed_total: int | UnsetType = UNSET
    unrecovered: Annotated[int | UnsetType, _("credits a reversal could not take back")] = UNSET
    reversal: Transaction | UnsetType | None = UNSET
    dispute_id: str | UnsetType = UNSET
    credits_disputed: int | UnsetType = UNSET


# ---------------------------------------------------------------- errors


class ErrorBody(msgspec.Struct, tag_field="error", forbid_unknown_fields=True):
    """`{"error": CODE, "message": ..., ...details}`; one subclass per code."""

    message: Annotated[str, _("for a human; the code is what to act on")]


class InvalidJsonError(ErrorBody, tag="invalid_json"):
    """The body is not JSON."""


class UnauthorizedError(ErrorBody, tag="unauthorized"):
    """Missing or invalid service key, token or webhook signature."""


class ForbiddenError(ErrorBody, tag="forbidden"):
    """The service key's scope does not allow this operation; nothing was done."""

    scope: Annotated[Literal["read", "spend", "admin"], _("the scope the operation needs")]


class InsufficientCreditsError(ErrorBody, tag="insufficient_credits"):
    """available < what the movement needs; nothing was written."""

    required: Annotated[int, _("credits the movement needs")]
    available: Annotated[int, _("credits available now")]


class LimitReachedError(ErrorBody, tag="limit_reached"):
    """A per-period cap; nothing was written. With `operation`: the plan's cap on that
    operation (units). Without, with `period`: the account's spend cap (credits spent and
    held)."""

    limit: Annotated[int, _("units of the operation, or credits, allowed per period")]
    used: Annotated[int, _("units charged this period, or credits spent and held this "
                           "window")]
    resets_at: Annotated[Timestamp, _("when the period ends")]
    operation: Annotated[str | UnsetType, _("the plan's limited operation")] = UNSET
    period: Annotated[SpendPeriod | UnsetType, _("the spend cap's period")] = UNSET


class NotFoundError(ErrorBody, tag="not_found"):
    """No such hold, event or route (a webhook: its provider is not configured)."""


class MethodNotAllowedError(ErrorBody, tag="method_not_allowed"):
    """The path has no such method; `Allow` names those it has."""


class IdempotencyConflictError(ErrorBody, tag="idempotency_conflict"):
    """This idempotency_key was used with another body."""


class HoldNotActiveError(ErrorBody, tag="hold_not_active"):
    """The hold was already captured, released or expired."""

    status: Literal["captured", "released", "expired"]


class PayloadTooLargeError(ErrorBody, tag="payload_too_large"):
    """The body is over the limit."""

    limit: Annotated[int, _("bytes")]


class RateLimitedError(ErrorBody, tag="rate_limited"):
    """Too many requests; `Retry-After` says it in whole seconds."""

    retry_after: Annotated[float, _("seconds")]


class InvalidRequestError(ErrorBody, tag="invalid_request"):
    """A field, parameter or rule refused."""

    detail: Annotated[str, _("which field and why")]


class InternalError(ErrorBody, tag="internal_error"):
    """A failure of ours; retry."""

    request_id: Annotated[str | UnsetType, _("names the log line (also X-Request-Id)")] = UNSET


class ProviderUnavailableError(ErrorBody, tag="provider_unavailable"):
    """The payment provider's API failed; nothing was created."""

    provider: Literal["stripe", "dodo"]


class UnavailableError(ErrorBody, tag="unavailable"):
    """The database is unreachable; nothing was written."""


class OutcomeUnknownError(ErrorBody, tag="outcome_unknown"):
    """The database went away after the statement was sent: retry with the same
    idempotency_key."""


ERRORS: dict[str, type[ErrorBody]] = {
    str(cls.__struct_config__.tag): cls for cls in ErrorBody.__subclasses__()}
