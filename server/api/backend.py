"""The app's backend API (service key): accounts, money movements, holds, history, tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from starlette.requests import Request

from server import errors, outbox, spend_caps
from server.api.http import (
    CURSOR,
    PAGE_SIZE,
    account_param,
    account_query,
    audit,
    checkout_for,
    console_audit,
    history_page,
    hold_param,
    id_param,
    int_query,
    read_body,
    resources,
    time_query,
)
from server.catalog import Catalog, to_json
from server.history import USAGE_GROUPS
from server.ledger import Outcome, request_hash
from server.messages import (
    AdjustRequest,
    AlertsRequest,
    AutoTopUpRequest,
    CaptureRequest,
    ChargeRequest,
    CheckRequest,
    CreditRequest,
    DebitRequest,
    HoldRequest,
    LimitsRequest,
    PlanRequest,
    TokenRequest,
    decode_body,
    encoder,
)
from server.payments import topup
from server.resources import Resources

# A usage query reads every usage row in its range: the range is bounded (default: the
# last MAX_USAGE_RANGE).
MAX_USAGE_RANGE = timedelta(days=366)


async def get_account(request: Request) -> bytes:
    """The account; an unknown one reads as a new one would, and is not created."""
    return await resources(request).ledger.account(account_param(request))


async def open_account(request: Request) -> bytes:
    """Create the account now (at the app's signup), welcome credits included; the same
    account again changes nothing."""
    return await resources(request).ledger.open(account_param(request))


async def debit(request: Request) -> Outcome:
    """Spend credits: 402 unless available >= amount."""
    account_id = account_param(request)
    body = decode_body(DebitRequest, await read_body(request))
    return await resources(request).ledger.post(
        account_id, kind="usage", amount=-body.amount, reason=body.reason,
        idempotency_key=body.idempotency_key, fingerprint=request_hash("debit", body),
        metadata=body.metadata,
    )


async def credit(request: Request) -> Outcome:
    """Add credits (grant, purchase or refund), optionally expiring."""
    account_id = account_param(request)
    body = decode_body(CreditRequest, await read_body(request))
    if body.expires_at is not None and body.expires_at <= datetime.now(body.expires_at.tzinfo):
        raise errors.invalid_request("expires_at: must be in the future")
    return await resources(request).ledger.post(
        account_id, kind=body.kind, amount=body.amount, reason=body.reason,
        idempotency_key=body.idempotency_key, fingerprint=request_hash("credit", body),
        metadata=body.metadata, expires_at=body.expires_at, priority=body.priority,
        audit=audit(request, "credit", account_id, account_id,
                    {"amount": body.amount, "kind": body.kind, "reason": body.reason}),
    )


async def adjust(request: Request) -> Outcome:
    """An operator's signed correction; a negative one may not overdraw."""
    account_id = account_param(request)
    body = decode_body(AdjustRequest, await read_body(request))
    if body.amount == 0:
        raise errors.invalid_request("amount: must not be 0")
    return await resources(request).ledger.post(
        account_id, kind="adjustment", amount=body.amount, reason=body.reason,
        idempotency_key=body.idempotency_key, fingerprint=request_hash("adjust", body),
        metadata={"actor": body.actor},
        audit=audit(request, "adjust", account_id, account_id,
                    {"amount": body.amount, "reason": body.reason, "actor": body.actor}),
    )


def _catalog_price(catalog: Catalog, operation: str, quantity: int) -> int:
    """The catalog's price of `operation` (a plan may override it in SQL), or 422 for an
    unknown operation or a quantity over its cap."""
    price = catalog.prices.get(operation)
    if price is None:
        raise errors.invalid_request(f"operation: unknown operation {operation!r}")
    most = catalog.max_quantity(operation)
    if quantity > most:
        raise errors.invalid_request(f"quantity: at most {most} of {operation!r} at once")
    return price


def _priced(metadata: dict[str, Any] | None, operation: str, quantity: int,
            price: int) -> dict[str, Any]:
    """A charge's (or an operation's hold's) metadata: what was priced, and at what; the
    plan's price replaces unit_cost in SQL."""
    return {**(metadata or {}), "operation": operation, "quantity": quantity,
            "unit_cost": price}


async def charge(request: Request) -> Outcome:
    """Debit the price-list cost of an operation times quantity."""
    account_id = account_param(request)
    body = decode_body(ChargeRequest, await read_body(request))
    return await charge_operation(resources(request), account_id, body)


async def charge_operation(res: Resources, account_id: str, body: ChargeRequest) -> Outcome:
    """A charge: the catalog's price, which the account's plan may override (in SQL)."""
    price = _catalog_price(res.catalog, body.operation, body.quantity)
    metadata = _priced(body.metadata, body.operation, body.quantity, price)
    return await res.ledger.post(
        account_id, kind="usage", amount=-price * body.quantity, reason=body.operation,
        idempotency_key=body.idempotency_key, fingerprint=request_hash("charge", body),
        metadata=metadata, operation=body.operation, quantity=body.quantity,
    )


class _AmountHold(msgspec.Struct):
    """A hold of an amount as it was fingerprinted before holds could name an operation: a
    retry sent across the upgrade replays instead of conflicting with its own key."""

    amount: int
    reason: str
    idempotency_key: str
    ttl_seconds: int
    metadata: dict[str, Any] | None


async def place_hold(request: Request) -> Outcome:
    """Reserve credits for an operation in progress, an amount or a priced operation
    (limited as a charge is): 201, or 402."""
    account_id = account_param(request)
    body = decode_body(HoldRequest, await read_body(request))
    res = resources(request)
    if body.operation is not None and body.amount is None:
        price = _catalog_price(res.catalog, body.operation, body.quantity)
        return await res.ledger.hold(
            account_id, amount=price * body.quantity, ttl_seconds=body.ttl_seconds,
            reason=body.operation if body.reason is None else body.reason,
            idempotency_key=body.idempotency_key, fingerprint=request_hash("hold", body),
            metadata=_priced(body.metadata, body.operation, body.quantity, price),
            operation=body.operation, quantity=body.quantity,
        )
    if body.amount is None or body.operation is not None:
        raise errors.invalid_request("operation: give an operation (and quantity) or an amount")
    if body.reason is None:
        raise errors.invalid_request("reason: required with an amount")
    fingerprint = request_hash("hold", _AmountHold(
        body.amount, body.reason, body.idempotency_key, body.ttl_seconds, body.metadata))
    return await res.ledger.hold(
        account_id, amount=body.amount, ttl_seconds=body.ttl_seconds, reason=body.reason,
        idempotency_key=body.idempotency_key, fingerprint=fingerprint, metadata=body.metadata,
    )


async def capture_hold(request: Request) -> Outcome:
    """Spend all or part of a hold; the rest is released."""
    hold_id = hold_param(request)
    body = decode_body(CaptureRequest, await read_body(request))
    return await resources(request).ledger.resolve_hold(
        hold_id, "capture", amount=body.amount, metadata=body.metadata
    )


async def release_hold(request: Request) -> Outcome:
    """Give a hold's credits back to available."""
    hold_id = hold_param(request)
    await read_body(request)
    return await resources(request).ledger.resolve_hold(
        hold_id, "release", audit=console_audit(request, "hold_release", None, hold_id))


async def list_grants(request: Request) -> bytes:
    """Open grants in spending order."""
    return await resources(request).history.grants(account_param(request))


async def list_holds(request: Request) -> bytes:
    """Active holds, soonest to expire first."""
    return await resources(request).history.holds(account_param(request))


async def list_transactions(request: Request) -> bytes:
    """History, newest first, cursor-paged."""
    return await history_page(request, account_param(request))


async def usage(request: Request) -> bytes:
    """Spending grouped by reason or UTC day."""
    account_id = account_param(request)
    group_by = request.query_params.get("group_by", "reason")
    if group_by not in USAGE_GROUPS:
        raise errors.invalid_request(f"group_by: must be one of {', '.join(USAGE_GROUPS)}")
    until = time_query(request, "until")
    since = time_query(request, "since")
    end = until or datetime.now(UTC)
    if since is None:
        # An `until` in year 1 has no date 366 days before it: the range starts at year 1.
        since = max(end, datetime.min.replace(tzinfo=UTC) + MAX_USAGE_RANGE) - MAX_USAGE_RANGE
    elif end - since > MAX_USAGE_RANGE:
        raise errors.invalid_request(
            f"since: at most {MAX_USAGE_RANGE.days} days before until (or now)")
    return await resources(request).history.usage(
        account_id, since=since, until=until, group_by=group_by)


async def checkout(request: Request) -> Outcome:
    """A provider's checkout session for a package or a pay-as-you-go amount."""
    return await checkout_for(request, account_param(request))


async def mint_token(request: Request) -> bytes:
    """A short-lived user token for the browser (WebSocket, /v1/me)."""
    body = decode_body(TokenRequest, await read_body(request))
    token, expires_at = resources(request).tokens.mint(body.account_id, body.ttl_seconds)
    return encoder.encode({"token": token, "expires_at": expires_at})


async def prices(request: Request) -> bytes:
    """The price list."""
    return encoder.encode(resources(request).catalog.prices)


async def catalog(request: Request) -> bytes:
    """Prices, packages, pay-as-you-go rates, plans and alert defaults."""
    return to_json(resources(request).catalog)


async def set_plan(request: Request) -> Outcome:
    """Assign, change or remove the account's plan."""
    account_id = account_param(request)
    body = decode_body(PlanRequest, await read_body(request))
    res = resources(request)
    return await res.plans.assign(
        account_id, body.plan, body.anchor, body.idempotency_key, request_hash("plan", body),
        audit(request, "plan", account_id, account_id, {"plan": body.plan}))


async def get_plan(request: Request) -> bytes:
    """The account's plan, period, allowance left and limits used."""
    return await resources(request).plans.dashboard(account_param(request))


async def check(request: Request) -> bytes:
    """What a charge or debit would answer now; writes nothing."""
    account_id = account_param(request)
    body = decode_body(CheckRequest, await read_body(request))
    res = resources(request)
    if (body.operation is None) == (body.amount is None):
        raise errors.invalid_request("operation: give an operation (and quantity) or an amount")
    if body.operation is not None:
        _catalog_price(res.catalog, body.operation, body.quantity)
    return await res.plans.check(account_id, operation=body.operation,
                                 quantity=body.quantity, amount=body.amount)


async def set_alerts(request: Request) -> Outcome:
    """Set (or clear) the account's own low_balance threshold."""
    account_id = account_param(request)
    body = decode_body(AlertsRequest, await read_body(request))
    return await resources(request).ledger.set_alerts(
        account_id, body.low_balance,
        audit(request, "alerts", account_id, account_id, {"low_balance": body.low_balance}))


async def set_limits(request: Request) -> bytes:
    """Set (or remove, with `{"spend": null}`) the account's spend cap."""
    account_id = account_param(request)
    body = decode_body(LimitsRequest, await read_body(request))
    res = resources(request)
    spend = body.spend
    detail = None if spend is None else {"amount": spend.amount, "period": spend.period}
    return await spend_caps.set_limits(
        res.pool, res.ledger.welcome, account_id, spend,
        audit(request, "limits", account_id, account_id, {"spend": detail}))


async def get_limits(request: Request) -> bytes:
    """The account's spend cap and its current window's use."""
    return await spend_caps.limits(resources(request).pool, account_param(request))


async def get_settings(request: Request) -> bytes:
    """The account's alert threshold (its own and the one in force), auto top-up and spend
    cap."""
    text: str = await resources(request).pool.fetchval(
        "SELECT balance.balance_account_settings($1)::text", account_param(request))
    return text.encode()


async def list_events(request: Request) -> bytes:
    """App webhooks, newest first, with their attempts."""
    status = request.query_params.get("status")
    if status is not None and status not in outbox.STATUSES:
        raise errors.invalid_request(f"status: must be one of {', '.join(outbox.STATUSES)}")
    limit = int_query(request, "limit", 50, *PAGE_SIZE)
    assert limit is not None
    before = int_query(request, "before", None, *CURSOR)
    return await outbox.events_page(resources(request).pool, status, limit, before,
                                    account_query(request))


async def retry_event(request: Request) -> bytes:
    """Deliver an event again now, whatever its status."""
    event_id = id_param(request, "event")
    res = resources(request)
    webhook_id = await outbox.retry(
        res.pool, event_id, audit(request, "event_retry", None, str(event_id)))
    if webhook_id is None:
        raise errors.not_found("no such event")
    if res.outbox is not None:
        res.outbox.wake()
    return encoder.encode({"id": event_id, "webhook_id": webhook_id, "status": "pending"})


async def set_auto_top_up(request: Request) -> bytes:
    """Configure the account's auto top-up, or turn it off with a body of `null`."""
    account_id = account_param(request)
    raw = await read_body(request)
    res = resources(request)
    if raw.strip() == b"null":
        return await topup.configure(res.pool, res.ledger.welcome, account_id, None, None,
                                     audit(request, "auto_top_up", account_id, account_id))
    body = decode_body(AutoTopUpRequest, raw)
    if res.checkout.stripe_client is None:
        raise errors.invalid_request("BALANCE_STRIPE_API_KEY is not set: auto top-up is Stripe")
    found = res.catalog.packages.get(body.package)
    if found is None or not found.price:
        raise errors.invalid_request(f"package: no priced package {body.package!r} in the catalog")
    if body.target is not None and body.target <= body.threshold:
        raise errors.invalid_request("target: must be greater than threshold")
    currency = found.default_currency()
    if body.monthly_limit is not None and body.monthly_limit < found.price[currency]:
        raise errors.invalid_request(
            f"monthly_limit: less than one package ({found.price[currency]} {currency}): "
            "no top-up could be made")
    return await topup.configure(
        res.pool, res.ledger.welcome, account_id, body, currency,
        audit(request, "auto_top_up", account_id, account_id,
              {"package": body.package, "threshold": body.threshold, "target": body.target,
               "monthly_limit": body.monthly_limit}))
