"""Auto top-up: requests the alert trigger wrote become off-session Stripe PaymentIntents.

PostgreSQL decides when (schema.sql "top_ups": one request when `available` falls below the
account's threshold, none more until it succeeds or fails). This worker, in every instance,
claims due requests and creates the PaymentIntent with the official SDK, keyed by the
request's id so a retry never charges twice, for the package's price in Stripe's units
(server/currencies.py; events and the catalog keep ISO 4217's). The credits arrive through
the ordinary `payment_intent.succeeded` webhook, like any purchase; a decline is
`top_up.failed`.

With a `target`, one PaymentIntent buys as many packages as bring `available` (as the
trigger saw it) up to the target. With a `monthly_limit`, PostgreSQL decides, after the
request is priced and before Stripe is asked, whether this month's top-ups leave room for
it; if not, nothing is charged and `top_up.limit_reached` pauses it until the month turns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import stripe

from server import errors
from server.audit import Audit
from server.catalog import MAX_CREDITS, MAX_PACKAGES, Catalog, Package
from server.currencies import STRIPE, Unrepresentable
from server.messages import AutoTopUpRequest

log = logging.getLogger("balance.topup")

NO_SAVED_CARD = "BL004"  # schema.sql balance_set_auto_top_up: no card given, none saved
LEASE = 60.0  # seconds a claimed request is this instance's
DEADLINE = 30.0  # seconds one request may take, well inside the lease
RETRY_IN = 30.0  # seconds before a request Stripe did not answer is tried again
# Stripe keeps an idempotency key 24 hours: past that a retry could charge twice, so a
# request that has not gone through by then is given up well before.
GIVE_UP_AFTER = timedelta(hours=12)
# What may succeed if tried again; any other Stripe error fails the request at once.
_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError,
              httpx.HTTPError, TimeoutError)


async def configure(pool: asyncpg.Pool, welcome: int, account_id: str,
                    config: AutoTopUpRequest | None, currency: str | None,
                    audit: Audit) -> bytes:
    """Configure (armed at once unless a top-up is in flight) or turn off (None) the
    account's auto top-up: `{"auto_top_up": ... or null}`, audited. `currency`: the one
    the package is charged in, which its monthly limit counts."""
    if config is not None and (config.stripe_customer is None) != (
            config.stripe_payment_method is None):
        raise errors.invalid_request("stripe_customer, stripe_payment_method: give both, or "
                                     "neither for the card the account's checkout saved")
    try:
        async with pool.acquire() as conn, conn.transaction():
            text: str = await conn.fetchval(
                "SELECT balance.balance_set_auto_top_up($1, $2, $3, $4, $5, $6, $7, $8, $9)::text",
                account_id, welcome,
                *((config.package, config.threshold, config.stripe_customer,
                   config.stripe_payment_method, config.target, config.monthly_limit, currency)
                  if config else (None,) * 7))
            await audit.record(conn)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != NO_SAVED_CARD:
            raise
        raise errors.invalid_request(
            "stripe_customer: none given, and no checkout of this account saved a card (a "
            "plan's Stripe checkout does)") from None
    return text.encode()


def quantity(package: Package, target: int | None, available: int | None) -> int:
    """How many packages reach `target` from `available`: at least one, and at most
    MAX_PACKAGES (or what keeps the credits of one payment within 10^12); past that the
    top-up falls short of the target, and the next movement below the threshold asks again."""
    if target is None or available is None:  # no target, or requested before there was one
        return 1
    needed = -(-(target - available) // package.credits)
    return max(1, min(needed, MAX_PACKAGES, MAX_CREDITS // package.credits))


class TopUps:
    """Turns due top-up requests into PaymentIntents."""

    def __init__(self, pool: asyncpg.Pool, catalog: Catalog, client: stripe.StripeClient) -> None:
        self._pool = pool
        self._catalog = catalog
        self._stripe = client

    async def run_due(self, limit: int = 8) -> int:
        """Create the PaymentIntents of up to `limit` due requests, at once, each within
        DEADLINE (so the jobs loop around this is never held longer); how many."""
        rows = await self._pool.fetch("SELECT * FROM balance.balance_claim_top_ups($1, $2)",
                                      limit, LEASE)
        await asyncio.gather(*(self._create(row) for row in rows))
        return len(rows)

    async def resume_paused(self, limit: int = 100) -> int:
        """Arm again the auto top-ups their monthly limit paused, once the month has turned;
        how many."""
        resumed: int = await self._pool.fetchval(
            "SELECT balance.balance_resume_top_ups($1)", limit)
        return resumed

    def _price(self, row: asyncpg.Record) -> tuple[int, int, str] | None:
        """(quantity, amount in the catalog's minor units, currency) a request buys: its
        package's USD price when it has one, times the packages that reach its target."""
        found = self._catalog.packages.get(row["package"])
        if found is None or not found.price:
            return None
        currency = found.default_currency()
        n = quantity(found, row["target"], row["available"])
        return n, n * found.price[currency], currency

    async def _create(self, row: asyncpg.Record) -> None:
        request = str(row["id"])
        data: dict[str, Any] = {"top_up_id": request, "account_id": row["account_id"],
                                "package": row["package"]}
        if row["amount"] is not None:  # priced by an earlier try: charge exactly that
            n, amount, currency = row["quantity"], row["amount"], row["currency"]
        else:
            priced = self._price(row)
            if priced is None:  # the catalog dropped the package since it was configured
                await self._failed(request, "package_not_in_catalog", data)
                return
            n, amount, currency = priced
            # The monthly limit may cut the packages to what it still allows.
            [answer] = await self._pool.fetch(
                "SELECT * FROM balance.balance_top_up_priced($1, $2, $3, $4)", row["id"], n,
                amount, currency)
            verdict: str = answer["verdict"]
            n, amount = answer["quantity"], answer["amount"]
            if verdict in ("gone", "limit_reached"):  # turned off meanwhile; or told, paused
                return
            if verdict == "currency_changed":
                await self._failed(request, "currency_changed",
                                   {**data, "amount": amount, "currency": currency})
                return
        data.update(quantity=n, amount=amount, currency=currency)
        try:
            stripe_amount = STRIPE.to_provider(currency, amount)
        except Unrepresentable:  # the catalog is checked at start: only a code change gets here
            await self._failed(request, "amount_not_chargeable", data)
            return
        if datetime.now(UTC) - row["created_at"] > GIVE_UP_AFTER:
            await self._failed(request, "stripe_unreachable", data)
            return
        try:
            async with asyncio.timeout(DEADLINE):
                intent = await self._stripe.v1.payment_intents.create_async(
                    {
                        "amount": stripe_amount, "currency": currency,
                        "customer": row["stripe_customer"],
                        "payment_method": row["stripe_payment_method"],
                        "off_session": True, "confirm": True,
                        "metadata": {"account_id": row["account_id"],
                                     "package": row["package"], "auto_top_up": request,
                                     **_quantity(n)},
                    },
                    {"idempotency_key": f"top-up-{request}"},
                )
        except stripe.CardError as exc:
            await self._failed(request, exc.code or "card_declined",
                               {**data, "decline_code": getattr(exc.error, "decline_code", None)
                                if exc.error else None})
            return
        except _TRANSIENT as exc:
            log.warning("auto top-up %s: stripe unavailable: %s", request, type(exc).__name__)
            await self._pool.execute("SELECT balance.balance_top_up_later($1, $2, $3)", row["id"],
                                     RETRY_IN, type(exc).__name__)
            return
        except stripe.StripeError as exc:  # refused for good (bad customer, key, ...)
            log.warning("auto top-up %s: stripe refused: %s", request, type(exc).__name__)
            await self._failed(request, exc.code or type(exc).__name__, data)
            return
        data["payment_intent"] = intent.id
        if intent.status in ("requires_action", "requires_payment_method", "canceled"):
            # Off session nobody can authenticate: as good as a decline.
            await self._failed(request, f"payment_intent_{intent.status}", data)
            return
        await self._pool.execute("SELECT balance.balance_top_up_created($1, $2, $3::jsonb)",
                                 row["id"], intent.id, json.dumps(data))

    async def _failed(self, request: str, error: str, data: dict[str, Any]) -> None:
        await self._pool.execute(
            "SELECT balance.balance_top_up_failed($1::uuid, NULL, $2, $3::jsonb)",
            request, error, json.dumps(data))


def _quantity(n: int) -> dict[str, str]:
    """The metadata `quantity`, only past one package: a request tried before targets
    existed and retried now sends the parameters of its first try (Stripe refuses an
    idempotency key reused with others), and one package reads as a checkout's does."""
    return {"quantity": str(n)} if n > 1 else {}
