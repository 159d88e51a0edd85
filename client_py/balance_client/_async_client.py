"""The async client. `_sync_client.py` is generated from this file by
`scripts/make_sync.py` (do not edit that one): change this file, then run the script."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
import msgspec

from balance_client._core import (
    Attempts,
    Call,
    Settings,
    body,
    decode,
    need_key,
    path,
    query,
    wait_async,
)
from balance_client.errors import BalanceError, HoldNotActive
from balance_client.models import (
    Account,
    AccountPage,
    AccountResult,
    AccountSettings,
    AuditPage,
    AutoTopUpResult,
    Capture,
    CheckoutSession,
    CheckResult,
    Event,
    EventPage,
    EventRetry,
    Grants,
    HoldResult,
    Holds,
    LimitsResult,
    Movement,
    PaymentPage,
    PlanStatus,
    ResolveResult,
    SpendLimit,
    Token,
    Transaction,
    TransactionPage,
    Usage,
)

T = TypeVar("T")
CreditKind = Literal["grant", "purchase", "refund"]


class AsyncBalance:
    """balance-server's backend API, with the service key.

    Every call that moves credits takes `key`, your own id for the work (a job, an order):
    the same work gives the same key, so a retry (ours after a network failure, or yours
    after a crash) is answered with the first result instead of charging twice. Network
    errors, timeouts and 503s are retried with that key until `deadline` seconds pass.
    """

    def __init__(self, base_url: str | None = None, service_key: str | None = None, *,
                 timeout: float = 10.0, deadline: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = Settings.resolve(base_url, service_key, timeout, deadline)
        self._http = httpx.AsyncClient(base_url=self._settings.base_url,
                                       headers=self._settings.headers(), transport=transport)

    async def __aenter__(self) -> AsyncBalance:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        attempts = Attempts(call, self._settings)
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, content=call.content, params=call.params,
                    headers=call.headers(), timeout=attempts.timeout())
            except httpx.TransportError as exc:
                delay = attempts.failed(exc)
            else:
                wait = attempts.retry_after(response)
                if wait is None:
                    return decode(call, response)
                delay = wait
            await wait_async(delay)

    def _move(self, url: str, result: type[T], key: str, fields: dict[str, Any],
              method: str = "POST", audit_reason: str | None = None,
              **optional: Any) -> Call[T]:
        """A keyed mutation: the key goes in the body as idempotency_key."""
        fields["idempotency_key"] = need_key(key)
        return Call(method, url, result, body(fields, **optional), key=key, mutation=True,
                    reason=audit_reason)

    # -- accounts and money -------------------------------------------------------------

    async def get_account(self, account: str) -> Account:
        """The account; an unknown one reads as a new one would (nothing is created)."""
        return await self._run(Call("GET", path("/v1/accounts/{}", account), Account))

    async def open_account(self, account: str) -> Account:
        """Create the account now (at your signup), with its welcome credits; again is a
        no-op."""
        return await self._run(Call("POST", path("/v1/accounts/{}", account), Account,
                                    mutation=True))

    async def debit(self, account: str, *, amount: int, reason: str, key: str,
                    metadata: dict[str, Any] | None = None) -> Movement:
        """Spend `amount` credits; InsufficientCredits unless available >= amount."""
        return await self._run(self._move(
            path("/v1/accounts/{}/debit", account), Movement, key,
            {"amount": amount, "reason": reason}, metadata=metadata))

    async def charge(self, account: str, *, operation: str, key: str, quantity: int = 1,
                     metadata: dict[str, Any] | None = None) -> Movement:
        """Spend the price of `quantity` x `operation` (the catalog's, or the plan's)."""
        return await self._run(self._move(
            path("/v1/accounts/{}/charge", account), Movement, key,
            {"operation": operation, "quantity": quantity}, metadata=metadata))

    async def credit(self, account: str, *, amount: int, kind: CreditKind, key: str,
                     reason: str | None = None, expires_at: datetime | None = None,
                     priority: int | None = None, metadata: dict[str, Any] | None = None,
                     audit_reason: str | None = None) -> Movement:
        """Add credits: a grant, a purchase or a refund, optionally expiring. Every
        operator action takes an `audit_reason`: why, in the server's audit log."""
        return await self._run(self._move(
            path("/v1/accounts/{}/credit", account), Movement, key,
            {"amount": amount, "kind": kind}, audit_reason=audit_reason, reason=reason,
            expires_at=expires_at, priority=priority, metadata=metadata))

    async def adjust(self, account: str, *, amount: int, reason: str, actor: str,
                     key: str) -> Movement:
        """An operator's signed correction (a negative one may not overdraw); `reason` is
        also its audit log entry's."""
        return await self._run(self._move(
            path("/v1/accounts/{}/adjust", account), Movement, key,
            {"amount": amount, "reason": reason, "actor": actor}))

    async def check(self, account: str, *, operation: str | None = None,
                    quantity: int | None = None, amount: int | None = None) -> CheckResult:
        """What a charge (operation) or debit (amount) would answer now; writes nothing."""
        return await self._run(Call("POST", path("/v1/accounts/{}/check", account),
                                    CheckResult, body({}, operation=operation,
                                                      quantity=quantity, amount=amount)))

    # -- holds -------------------------------------------------------------------------

    async def place_hold(self, account: str, *, key: str, amount: int | None = None,
                         operation: str | None = None, quantity: int | None = None,
                         reason: str | None = None, ttl_seconds: int | None = None,
                         metadata: dict[str, Any] | None = None) -> HoldResult:
        """Reserve `amount` credits, or the price of `quantity` x `operation`, for
        `ttl_seconds` (default 300); InsufficientCredits or LimitReached when it cannot."""
        return await self._run(self._move(
            path("/v1/accounts/{}/holds", account), HoldResult, key, {}, amount=amount,
            operation=operation, quantity=quantity, reason=reason, ttl_seconds=ttl_seconds,
            metadata=metadata))

    async def capture_hold(self, hold_id: str, *, amount: int | None = None,
                           metadata: dict[str, Any] | None = None) -> Capture:
        """Spend `amount` of the hold (default all of it) and release the rest. The hold is
        the key: the same capture again answers the first one, replayed."""
        return await self._run(Call("POST", path("/v1/holds/{}/capture", hold_id), Capture,
                                    body({}, amount=amount, metadata=metadata),
                                    key=hold_id, mutation=True))

    async def release_hold(self, hold_id: str, *,
                           audit_reason: str | None = None) -> HoldResult:
        """Give the hold's credits back; a release again answers the first one, replayed."""
        return await self._run(Call("POST", path("/v1/holds/{}/release", hold_id), HoldResult,
                                    key=hold_id, mutation=True, reason=audit_reason))

    def reserve(self, account: str, *, key: str, amount: int | None = None,
                operation: str | None = None, quantity: int = 1, reason: str | None = None,
                ttl_seconds: int = 300,
                metadata: dict[str, Any] | None = None) -> AsyncReservation:
        """Pay for work that succeeded: `(async) with balance.reserve(...) as r:` holds the
        credits, runs the block, captures them when it ends (`r.settle(n)` for less, 0 for
        nothing) and releases them when it raises. `key` is the work's own id: the same key
        again while the first runs shares its hold (charged once; if that attempt raises, it
        leaves the hold to the first or to its expiry); after the first settled,
        HoldNotActive (`hold_status`) before the block runs."""
        return AsyncReservation(self, account, key=key, amount=amount, operation=operation,
                                quantity=quantity, reason=reason, ttl_seconds=ttl_seconds,
                                metadata=metadata)

    # -- history -----------------------------------------------------------------------

    async def list_transactions(self, account: str, *, limit: int | None = None,
                                before: str | None = None,
                                kind: str | None = None) -> TransactionPage:
        """One page of history, newest first (`before`: the previous page's `next`)."""
        return await self._run(Call("GET", path("/v1/accounts/{}/transactions", account),
                                    TransactionPage,
                                    params=query(limit=limit, before=before, kind=kind)))

    async def iter_transactions(self, account: str, *, kind: str | None = None,
                                page_size: int = 50) -> AsyncIterator[Transaction]:
        """Every transaction, newest first, a page at a time."""
        before: str | None = None
        while True:
            page = await self.list_transactions(account, limit=page_size, before=before,
                                                kind=kind)
            for transaction in page.transactions:
                yield transaction
            if page.next is None:
                return
            before = page.next

    async def usage(self, account: str, *,
                    group_by: Literal["reason", "day", "day,reason"] | None = None,
                    since: datetime | None = None, until: datetime | None = None) -> Usage:
        """Credits spent, grouped by reason, UTC day or both, in [since, until)."""
        return await self._run(Call("GET", path("/v1/accounts/{}/usage", account), Usage,
                                    params=query(group_by=group_by, since=since, until=until)))

    async def list_grants(self, account: str) -> Grants:
        """Open credit lots, in the order they are spent."""
        return await self._run(Call("GET", path("/v1/accounts/{}/grants", account), Grants))

    async def list_holds(self, account: str) -> Holds:
        """Active holds, soonest to expire first."""
        return await self._run(Call("GET", path("/v1/accounts/{}/holds", account), Holds))

    # -- plans, alerts, auto top-up -----------------------------------------------------

    async def set_plan(self, account: str, plan: str | None, *, key: str,
                       anchor: datetime | None = None,
                       audit_reason: str | None = None) -> AccountResult:
        """Assign, change or remove (None) the account's plan."""
        return await self._run(self._move(
            path("/v1/accounts/{}/plan", account), AccountResult, key, {"plan": plan}, "PUT",
            audit_reason, anchor=anchor))

    async def get_plan(self, account: str) -> PlanStatus:
        """The plan, its period, the allowance left and each limit's use."""
        return await self._run(Call("GET", path("/v1/accounts/{}/plan", account), PlanStatus))

    async def set_alerts(self, account: str, *, low_balance: int | None,
                         audit_reason: str | None = None) -> AccountResult:
        """The account's own low-balance threshold (None: its plan's or the default)."""
        return await self._run(Call("PUT", path("/v1/accounts/{}/alerts", account),
                                    AccountResult, body({"low_balance": low_balance}),
                                    reason=audit_reason))

    async def set_limits(self, account: str, *, spend: SpendLimit | None,
                         audit_reason: str | None = None) -> LimitsResult:
        """The account's spend cap (None: remove it): debits, charges and holds past it are
        refused with LimitReached (no `operation`)."""
        return await self._run(Call(
            "PUT", path("/v1/accounts/{}/limits", account), LimitsResult,
            body({"spend": None if spend is None else msgspec.to_builtins(spend)}),
            reason=audit_reason))

    async def limits(self, account: str) -> LimitsResult:
        """The account's spend cap and its current window's use."""
        return await self._run(Call("GET", path("/v1/accounts/{}/limits", account),
                                    LimitsResult))

    async def get_settings(self, account: str) -> AccountSettings:
        """The low-balance threshold in force (and the account's own), the auto top-up, the
        spend cap."""
        return await self._run(Call("GET", path("/v1/accounts/{}/settings", account),
                                    AccountSettings))

    async def set_auto_top_up(self, account: str, *, package: str, threshold: int,
                              stripe_customer: str | None = None,
                              stripe_payment_method: str | None = None,
                              target: int | None = None, monthly_limit: int | None = None,
                              audit_reason: str | None = None) -> AutoTopUpResult:
        """Buy `package` off-session with Stripe whenever available falls below
        `threshold`: as many as reach `target`, within `monthly_limit` (minor units of the
        package's currency) a UTC month; charged to the customer's payment method, or
        (neither given) the card the account's checkout saved."""
        return await self._run(Call(
            "PUT", path("/v1/accounts/{}/auto-top-up", account), AutoTopUpResult,
            body({"package": package, "threshold": threshold},
                 stripe_customer=stripe_customer, stripe_payment_method=stripe_payment_method,
                 target=target, monthly_limit=monthly_limit), reason=audit_reason))

    async def disable_auto_top_up(self, account: str, *,
                                  audit_reason: str | None = None) -> AutoTopUpResult:
        """Turn the account's auto top-up off."""
        return await self._run(Call("PUT", path("/v1/accounts/{}/auto-top-up", account),
                                    AutoTopUpResult, b"null", reason=audit_reason))

    # -- payments, browser tokens, catalog ----------------------------------------------

    async def checkout(self, account: str, *, provider: Literal["stripe", "dodo"],
                       success_url: str, key: str, package: str | None = None,
                       plan: str | None = None, amount: int | None = None,
                       currency: str | None = None, cancel_url: str | None = None,
                       customer_email: str | None = None) -> CheckoutSession:
        """A provider's checkout page for a package, a pay-as-you-go amount, or a plan (it
        starts the plan's subscription): send the buyer to `.url`; the credits (or the plan)
        arrive through the provider's webhooks."""
        return await self._run(self._move(
            path("/v1/accounts/{}/checkout", account), CheckoutSession, key,
            {"provider": provider, "success_url": success_url}, package=package, plan=plan,
            amount=amount, currency=currency, cancel_url=cancel_url,
            customer_email=customer_email))

    async def create_token(self, account: str, *, ttl_seconds: int | None = None) -> Token:
        """A short-lived token for this account's browser (WebSocket, /v1/me)."""
        return await self._run(Call("POST", "/v1/tokens", Token,
                                    body({"account_id": account}, ttl_seconds=ttl_seconds)))

    async def prices(self) -> dict[str, int]:
        """The price list: operation -> credits per unit."""
        return await self._run(Call("GET", "/v1/prices", dict[str, int]))

    async def catalog(self) -> dict[str, Any]:
        """Prices, packages, pay-as-you-go rates, plans and alert defaults."""
        return await self._run(Call("GET", "/v1/catalog", dict[str, Any]))

    # -- app webhooks ---------------------------------------------------------------------

    async def list_events(self, *, status: Literal["pending", "delivered", "failed"] | None
                          = None, limit: int | None = None, before: int | None = None,
                          account: str | None = None) -> EventPage:
        """App webhooks (of one account, or all), newest first, with their attempts."""
        return await self._run(Call("GET", "/v1/events", EventPage, params=query(
            status=status, limit=limit, before=before, account_id=account)))

    async def iter_events(self, *, status: Literal["pending", "delivered", "failed"] | None
                          = None, page_size: int = 50) -> AsyncIterator[Event]:
        """Every app webhook, newest first, a page at a time."""
        before: int | None = None
        while True:
            page = await self.list_events(status=status, limit=page_size, before=before)
            for event in page.events:
                yield event
            if page.next is None:
                return
            before = page.next

    async def retry_event(self, event_id: int, *,
                          audit_reason: str | None = None) -> EventRetry:
        """Deliver an app webhook again now, whatever its status."""
        return await self._run(Call("POST", path("/v1/events/{}/retry", event_id), EventRetry,
                                    reason=audit_reason))

    # -- operators ------------------------------------------------------------------------

    async def search_accounts(self, prefix: str = "", *, limit: int | None = None,
                              cursor: str | None = None) -> AccountPage:
        """Accounts whose id starts with `prefix`, the last changed first."""
        return await self._run(Call("GET", "/v1/accounts", AccountPage, params=query(
            prefix=prefix or None, limit=limit, cursor=cursor)))

    async def list_payments(
        self, status: Literal["credited", "reversed", "disputed", "needs_review", "resolved"],
        *, account: str | None = None, limit: int | None = None, cursor: str | None = None,
    ) -> PaymentPage:
        """Payments in `status`, newest first (needs_review: paid, not credited, open)."""
        return await self._run(Call("GET", "/v1/payments", PaymentPage, params=query(
            status=status, account_id=account, limit=limit, cursor=cursor)))

    async def credit_review(self, review_id: int, *, note: str, credits: int | None = None,
                            account: str | None = None,
                            audit_reason: str | None = None) -> ResolveResult:
        """Credit a payment under review once (the catalog's credits and the account its
        event named, unless given). The review is the key: the same call again answers the
        first one, replayed; any other resolution of it is IdempotencyConflict."""
        return await self._run(Call(
            "POST", path("/v1/payments/reviews/{}/credit", review_id), ResolveResult,
            body({"note": note}, credits=credits, account_id=account),
            key=f"review:{review_id}", mutation=True, reason=audit_reason))

    async def dismiss_review(self, review_id: int, *, note: str,
                             audit_reason: str | None = None) -> ResolveResult:
        """Dismiss a payment under review once: nothing is credited (as credit_review)."""
        return await self._run(Call(
            "POST", path("/v1/payments/reviews/{}/dismiss", review_id), ResolveResult,
            body({"note": note}), key=f"review:{review_id}", mutation=True,
            reason=audit_reason))

    async def audit_log(self, *, account: str | None = None, limit: int | None = None,
                        before: int | None = None) -> AuditPage:
        """What operators did, newest first."""
        return await self._run(Call("GET", "/v1/audit", AuditPage, params=query(
            account_id=account, limit=limit, before=before)))


class AsyncReservation:
    """A hold around a piece of work (see `AsyncBalance.reserve`): after the block,
    `.captured` is the capture (None when the work raised or settled 0)."""

    def __init__(self, client: AsyncBalance, account: str, *, key: str, amount: int | None,
                 operation: str | None, quantity: int, reason: str | None, ttl_seconds: int,
                 metadata: dict[str, Any] | None) -> None:
        if (amount is None) == (operation is None):
            raise TypeError("reserve: give an amount or an operation (one of the two)")
        if amount is not None and reason is None:
            raise TypeError("reserve: an amount needs a reason (what the credits pay for)")
        self._client = client
        self._account = account
        self._key = need_key(key)
        self._amount, self._operation, self._reason = amount, operation, reason
        self._quantity = None if operation is None else quantity
        self._ttl_seconds, self._metadata = ttl_seconds, metadata
        self._final: int | None = None
        self.held: HoldResult | None = None
        self.captured: Capture | None = None

    @property
    def amount(self) -> int:
        """The credits held."""
        if self.held is None:
            raise RuntimeError("the reservation has not been placed yet")
        return self.held.hold.amount

    def settle(self, amount: int) -> None:
        """Capture `amount` (at most what is held; 0: release all) instead of all of it."""
        if not 0 <= amount <= self.amount:
            raise ValueError(f"settle: between 0 and the {self.amount} credits held")
        self._final = amount

    async def __aenter__(self) -> AsyncReservation:
        self.held = await self._client.place_hold(
            self._account, key=self._key, amount=self._amount, operation=self._operation,
            quantity=self._quantity, reason=self._reason, ttl_seconds=self._ttl_seconds,
            metadata=self._metadata)
        hold = self.held.hold
        if hold.status != "active":
            # This key's work was done before (a retry after it was captured, released or
            # expired): doing it again would go unpaid, or be paid by nothing.
            raise HoldNotActive(409, "hold_not_active", (
                f"the work keyed {self._key!r} was already settled: its hold {hold.id} is "
                f"{hold.status}; a new attempt of the work needs a new key"),
                {"error": "hold_not_active", "status": hold.status, "hold": hold.id})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self.held is not None
        hold_id = self.held.hold.id
        if exc is None:
            if self._final == 0:
                await self._client.release_hold(hold_id)
            else:
                self.captured = await self._client.capture_hold(hold_id, amount=self._final)
            return
        if self.held.replayed:
            # Another attempt of this work placed the hold and may still succeed and capture
            # it: releasing it under that attempt would leave its work unpaid. The first
            # attempt resolves it, or it expires.
            exc.add_note(f"balance: the hold {hold_id} is shared with an earlier attempt of "
                         f"this work: left to it, or to expire at "
                         f"{self.held.hold.expires_at.isoformat()}")
            return
        try:
            await self._client.release_hold(hold_id)
        except BalanceError as failed:
            # The work's error is the one to raise; the hold expires on its own anyway.
            exc.add_note(f"balance: the hold {hold_id} was not released ({failed}); it "
                         f"expires at {self.held.hold.expires_at.isoformat()}")
