"""The route table: every API operation once, with what OpenAPI says of it.

Starlette's routes and /openapi.json are both built from `OPERATIONS`, so they cannot
drift apart. A handler returns its JSON (or a ledger Outcome); the route answers it with
the operation's status, after checking the service key where the table asks for one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from server.api import backend, browser, operator, shapes, webhooks
from server.api.http import ACTOR, CONSOLE, resources, user
from server.auth import check_scope, check_service_key
from server.catalog import Catalog
from server.config import Scope, ServiceKey
from server.console import session as console
from server.errors import Problem, rate_limited, unauthorized
from server.ledger import Outcome
from server.messages import (
    AdjustRequest,
    AlertsRequest,
    AutoTopUpRequest,
    CaptureRequest,
    ChargeRequest,
    CheckoutRequest,
    CheckRequest,
    CreditRequest,
    CreditReviewRequest,
    DebitRequest,
    DismissReviewRequest,
    HoldRequest,
    LimitsRequest,
    PlanRequest,
    TokenRequest,
)
from server.resources import Resources

Handler = Callable[[Request], Awaitable[bytes | Outcome]]
Auth = Literal["service", "user", "service_or_user", "signature"]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    body: type[msgspec.Struct] | None = None
    status: int = 200
    # The error codes it answers beyond what every operation may (openapi.py `_ALWAYS`, and
    # a body's or a parameter's own); OUTCOME: it writes through server/db.py `movement`.
    refusals: tuple[str, ...] = ()
    query: tuple[str, ...] = ()  # its query parameters, by name (openapi.py has their rules)
    body_required: bool = True  # False: no body means an empty one (capture: all of it)
    body_nullable: bool = False  # a body of `null` means "none" (turn the setting off)
    # What it answers with `status`: a shapes Struct (or an alias msgspec can describe).
    answer: Any = field(kw_only=True)
    # The service key scope it needs (config.SCOPES), on the routes a service key may call.
    scope: Scope = field(default="admin", kw_only=True)
    # An operator action: written to the audit log with its change (and its X-Audit-Reason).
    audited: bool = field(default=False, kw_only=True)


# Refusals, by error code (errors.HTTP_STATUS gives each one's status).
OUTCOME = "outcome_unknown"  # a movement: the database may have gone away after it was sent
_SPEND = ("insufficient_credits", "idempotency_conflict", OUTCOME)
_HOLD = ("not_found", "hold_not_active", OUTCOME)
_CHECKOUT = ("idempotency_conflict", "provider_unavailable")
_WEBHOOK = ("invalid_json", "not_found", "payload_too_large", "invalid_request", OUTCOME)

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v1/accounts/{account_id}", backend.get_account,
              "Read an account (an unknown one reads as new; nothing is created)", "service",
              answer=shapes.Account, scope="read"),
    Operation("POST", "/v1/accounts/{account_id}", backend.open_account,
              "Create the account now, with its welcome credits (idempotent)", "service",
              refusals=(OUTCOME,), body_required=False, answer=shapes.Account, scope="spend"),
    Operation("POST", "/v1/accounts/{account_id}/debit", backend.debit,
              "Spend credits", "service", DebitRequest, refusals=(*_SPEND, "limit_reached"),
              answer=shapes.TransactionResult, scope="spend"),
    Operation("POST", "/v1/accounts/{account_id}/credit", backend.credit,
              "Add credits", "service", CreditRequest, refusals=("idempotency_conflict", OUTCOME),
              answer=shapes.TransactionResult, audited=True),
    Operation("POST", "/v1/accounts/{account_id}/adjust", backend.adjust,
              "Operator adjustment", "service", AdjustRequest, refusals=_SPEND,
              answer=shapes.TransactionResult, audited=True),
    Operation("POST", "/v1/accounts/{account_id}/charge", backend.charge,
              "Charge a priced operation", "service", ChargeRequest,
              refusals=(*_SPEND, "limit_reached"), answer=shapes.TransactionResult, scope="spend"),
    Operation("POST", "/v1/accounts/{account_id}/holds", backend.place_hold,
              "Reserve credits", "service", HoldRequest, 201,
              refusals=(*_SPEND, "limit_reached"),
              answer=shapes.HoldResult, scope="spend"),
    Operation("GET", "/v1/accounts/{account_id}/transactions", backend.list_transactions,
              "History, newest first", "service", query=("limit", "before", "kind"),
              answer=shapes.TransactionPage, scope="read"),
    Operation("GET", "/v1/accounts/{account_id}/usage", backend.usage,
              "Spending grouped", "service", query=("group_by", "since", "until"),
              answer=shapes.Usage, scope="read"),
    Operation("GET", "/v1/accounts/{account_id}/grants", backend.list_grants,
              "Open grants, in spending order", "service", answer=shapes.GrantList, scope="read"),
    Operation("GET", "/v1/accounts/{account_id}/holds", backend.list_holds,
              "Active holds, soonest to expire first", "service", answer=shapes.HoldList,
              scope="read"),
    Operation("PUT", "/v1/accounts/{account_id}/plan", backend.set_plan,
              "Assign, change or remove the plan", "service", PlanRequest,
              refusals=("idempotency_conflict", OUTCOME), answer=shapes.AccountResult,
              audited=True),
    Operation("GET", "/v1/accounts/{account_id}/plan", backend.get_plan,
              "Plan, period, allowance left, limits used", "service",
              answer=shapes.PlanDashboard, scope="read"),
    Operation("POST", "/v1/accounts/{account_id}/check", backend.check,
              "What a charge or debit would answer (writes nothing)", "service", CheckRequest,
              answer=shapes.CheckResult, scope="spend"),
    Operation("PUT", "/v1/accounts/{account_id}/alerts", backend.set_alerts,
              "Set the account's low_balance threshold", "service", AlertsRequest,
              refusals=(OUTCOME,), answer=shapes.AlertsResult, audited=True),
    Operation("PUT", "/v1/accounts/{account_id}/limits", backend.set_limits,
              "Set the account's spend cap per UTC hour, day or month, or remove it (null)",
              "service", LimitsRequest, refusals=(OUTCOME,), answer=shapes.LimitsResult,
              audited=True),
    Operation("GET", "/v1/accounts/{account_id}/limits", backend.get_limits,
              "The account's spend cap, and what its current window has spent and holds",
              "service", answer=shapes.LimitsResult, scope="read"),
    Operation("GET", "/v1/accounts/{account_id}/settings", backend.get_settings,
              "The low-balance threshold in force (and the account's own), the auto top-up, "
              "the spend cap", "service", answer=shapes.AccountSettings, scope="read"),
    Operation("PUT", "/v1/accounts/{account_id}/auto-top-up", backend.set_auto_top_up,
              "Configure auto top-up (Stripe), or turn it off with null", "service",
              AutoTopUpRequest, body_nullable=True, answer=shapes.AutoTopUpResult, audited=True),
    Operation("GET", "/v1/events", backend.list_events,
              "App webhooks and their attempts, newest first", "service",
              query=("status", "limit", "before", "account_id"), answer=shapes.EventPage,
              scope="read"),
    Operation("POST", "/v1/events/{event_id}/retry", backend.retry_event,
              "Deliver an app webhook again now", "service", refusals=("not_found",),
              answer=shapes.EventRetry, audited=True),
    Operation("POST", "/v1/holds/{hold_id}/capture", backend.capture_hold,
              "Capture a hold", "service", CaptureRequest, refusals=_HOLD,
              body_required=False, answer=shapes.CaptureResult, scope="spend"),
    Operation("POST", "/v1/holds/{hold_id}/release", backend.release_hold,
              "Release a hold", "service", refusals=(*_HOLD, "payload_too_large"),
              answer=shapes.HoldResult, scope="spend", audited=True),
    Operation("POST", "/v1/accounts/{account_id}/checkout", backend.checkout,
              "Open a provider checkout", "service", CheckoutRequest, 201, refusals=_CHECKOUT,
              answer=shapes.CheckoutSession, scope="spend"),
    Operation("GET", "/v1/accounts", operator.search_accounts,
              "Accounts whose id starts with a prefix, the last changed first", "service",
              query=("prefix", "limit", "cursor"), answer=shapes.AccountPage, scope="read"),
    Operation("GET", "/v1/payments", operator.list_payments,
              "Payments in one status (credited, reversed, disputed, needs_review, resolved), "
              "newest first", "service", query=("payment_status", "account_id", "limit",
                                                "cursor"),
              answer=shapes.PaymentPage, scope="read"),
    Operation("POST", "/v1/payments/reviews/{review_id}/credit", operator.credit_review,
              "Credit a payment under review, once", "service", CreditReviewRequest,
              refusals=("not_found", "idempotency_conflict", OUTCOME),
              answer=shapes.ResolveResult, audited=True),
    Operation("POST", "/v1/payments/reviews/{review_id}/dismiss", operator.dismiss_review,
              "Dismiss a payment under review (credit nothing), once", "service",
              DismissReviewRequest,
              refusals=("not_found", "idempotency_conflict", OUTCOME),
              answer=shapes.ResolveResult, audited=True),
    Operation("GET", "/v1/audit", operator.audit_log,
              "What operators did (the audit log), newest first", "service",
              query=("account_id", "limit", "before"), answer=shapes.AuditPage, scope="read"),
    Operation("POST", "/v1/tokens", backend.mint_token,
              "Mint a browser token", "service", TokenRequest, answer=shapes.Token, scope="spend"),
    Operation("GET", "/v1/prices", backend.prices, "The price list", "service",
              answer=shapes.Prices, scope="read"),
    Operation("GET", "/v1/catalog", backend.catalog, "The catalog", "service_or_user",
              answer=Catalog, scope="read"),
    Operation("GET", "/v1/me", browser.me, "The token's account", "user", answer=shapes.Me),
    Operation("GET", "/v1/me/transactions", browser.my_transactions,
              "The token's history", "user", query=("limit", "before", "kind"),
              answer=shapes.TransactionPage),
    Operation("GET", "/v1/me/plan", browser.my_plan,
              "The token's account's plan and allowance", "user", answer=shapes.PlanDashboard),
    Operation("POST", "/v1/me/checkout", browser.my_checkout,
              "Open a provider checkout for the token's account", "user", CheckoutRequest, 201,
              refusals=_CHECKOUT, answer=shapes.CheckoutSession),
    Operation("POST", "/v1/webhooks/stripe", webhooks.stripe_webhook,
              "Stripe events (Stripe-Signature)", "signature", refusals=_WEBHOOK,
              answer=shapes.WebhookAck),
    Operation("POST", "/v1/webhooks/dodo", webhooks.dodo_webhook,
              "Dodo Payments events (Standard Webhooks)", "signature", refusals=_WEBHOOK,
              answer=shapes.WebhookAck),
)


async def _authenticate(request: Request, auth: Auth, scope: Scope, audited: bool) -> None:
    """Service-key routes check the key and its scope here (and its rate limit, when one is
    set); user routes verify their token themselves. The operator console's session cookie
    stands for the key it was opened with, to read and to make the operator's (audited)
    changes. Who acts is left in the scope's `balance.actor`."""
    header = request.headers.get("authorization")
    if auth == "service":
        res = resources(request)
        key = _service_key(request, res, header, audited)
        check_scope(key, scope)
        if res.limits.limits("service"):
            retry = await res.limits.hit("service", key.name)
            if retry is not None:
                raise rate_limited(retry)
    elif auth == "service_or_user":
        try:
            _service_key(request, resources(request), header, audited)
        except Problem:
            user(request)


def _service_key(request: Request, res: Resources, header: str | None,
                 audited: bool) -> ServiceKey:
    cookie = None if header else request.cookies.get(console.COOKIE)
    if cookie:  # the operator console, signed in (server/console/session.py)
        key = console.session_key(cookie, res.settings.token_secret, res.service_keys,
                                  request.method, request.headers.get(console.CSRF_HEADER))
        if request.method not in console.SAFE_METHODS and not audited:
            # A debit, a charge, a token for a user's browser...: the backend's business,
            # never the console's; everything a session changes is in the audit log.
            raise unauthorized("a console session reads, and makes only the operator's "
                               "audited changes; this route takes a service key")
        request.scope[ACTOR] = f"{CONSOLE}{key.name}"
    else:
        key = check_service_key(header, res.service_keys)
        request.scope[ACTOR] = key.name
    return key


_JSON_HEADER = (b"content-type", b"application/json")
_REPLAYED_HEADER = (b"idempotent-replayed", b"true")


class _Endpoint:
    """One operation as an ASGI app, which Starlette's Route takes as it is (its supported
    alternative to a request -> response function). It writes its answer as the two ASGI
    messages directly: Starlette's function wrapper would add a Response object and a layer
    of exception handling per request that the ExceptionMiddleware around the router
    already does, and the debit path is hot. Problems raised here reach that middleware."""

    __slots__ = ("audited", "auth", "handler", "scope", "status")

    def __init__(self, op: Operation) -> None:
        self.handler, self.status, self.auth, self.scope = op.handler, op.status, op.auth, op.scope
        self.audited = op.audited

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        await _authenticate(request, self.auth, self.scope, self.audited)
        result = await self.handler(request)
        headers = [_JSON_HEADER]
        if isinstance(result, Outcome):
            body = result.body
            if result.replayed:
                headers.append(_REPLAYED_HEADER)
        else:
            body = result
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def routes() -> list[Route]:
    """Starlette routes for every operation: one per path, so a 405 names (in Allow) every
    method the path has."""
    by_path: dict[str, dict[str, ASGIApp]] = {}
    for op in OPERATIONS:
        by_path.setdefault(op.path, {})[op.method] = _Endpoint(op)
    return [Route(path, _by_method(endpoints), methods=list(endpoints))
            for path, endpoints in by_path.items()]


def _by_method(endpoints: dict[str, ASGIApp]) -> ASGIApp:
    if len(endpoints) == 1:
        return next(iter(endpoints.values()))
    return _ByMethod(endpoints)


class _ByMethod:
    """A path's operations, by method (an ASGI app, as each of them is)."""

    __slots__ = ("endpoints",)

    def __init__(self, endpoints: dict[str, ASGIApp]) -> None:
        self.endpoints = endpoints

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        await self.endpoints[method](scope, receive, send)
