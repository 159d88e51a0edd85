"""Checkout: a provider's hosted payment page for a package, a pay-as-you-go amount, or the
subscription a catalog plan is sold as.

The session is created with the provider's official SDK (`stripe`, `dodopayments`), with
metadata `account_id` and `package` on the session and on the payment it makes, so the
payment webhook fulfils it (credits computed from the money received, as ever). What the
buyer is told the checkout buys comes from the catalog, never from the request. A plan's
checkout starts the subscription whose paid invoices then drive the plan (the metadata rides
on the subscription, which every invoice snapshots); Stripe saves the card it is paid with as
the customer's, which auto top-up then charges off session. Amounts are
the catalog's (ISO 4217 minor units) here and in the answer; Stripe is sent its own
(server/currencies.py), and an amount it cannot charge is refused before it is asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import dodopayments
import httpx
import stripe

from server import errors
from server.catalog import Catalog, Unpriced
from server.config import ConfigError, Settings
from server.currencies import STRIPE, Unrepresentable
from server.messages import CheckoutRequest

log = logging.getLogger("balance.checkout")

TIMEOUT = 10.0  # seconds per call to a provider
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A return URL is printable ASCII without the backslash: browsers strip spaces and control
# characters and read "\\" as "/", where a parser may not (a second opinion on the host).
_SAFE = r"\u0021-\u005b\u005d-\u007e"
_UNSAFE = re.compile(f"[^{_SAFE}]")
_REST = f"[{_SAFE}]*"
# A "." or ".." path segment (browsers decode %2e too): it would climb out of a path prefix.
_DOT_SEGMENT = re.compile(r"/(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)
_NO_DOT_SEGMENT = r"(?![^?#]*/(?:\.|%2[eE]){1,2}(?:[/?#]|$))"


class ReturnUrls:
    """BALANCE_CHECKOUT_RETURN_URLS: where a checkout may send the buyer back.

    An entry allows its origin (scheme, host, port: compared whole, so
    `https://app.example.com` admits neither `https://app.example.com.evil.io/` nor
    `https://app.example.com@evil.io/`) and, under it, its path at a segment boundary
    (`/app` admits `/app`, `/app/...`, `/app?...`, not `/apps` nor `/app/../admin`). A URL
    with a user name, password, space, control character or backslash is never admitted.
    """

    def __init__(self, entries: tuple[str, ...]) -> None:
        self._allowed: list[tuple[str, frozenset[str], str]] = []
        for entry in entries:
            parts = urlsplit(entry)
            scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
            try:
                port = parts.port
            except ValueError:
                port = -1
            if (not scheme or not netloc or "@" in netloc or port == -1
                    or netloc.endswith(":") or parts.query or parts.fragment
                    or _UNSAFE.search(entry)):
                raise ConfigError(f"BALANCE_CHECKOUT_RETURN_URLS: {entry!r} is not a URL of a "
                                  "scheme, a host (no user or password) and an optional path")
            host = netloc.rsplit(":", 1)[0] if port is not None else netloc
            default = _DEFAULT_PORTS.get(scheme)
            netlocs = {netloc} if port is not None and port != default else {host}
            if default is not None and (port is None or port == default):
                netlocs.add(f"{host}:{default}")
            self._allowed.append((scheme, frozenset(netlocs), parts.path or "/"))

    def admits(self, url: str) -> bool:
        """Whether `url` is under one of the entries."""
        if _UNSAFE.search(url):
            return False
        parts = urlsplit(url)
        scheme, netloc, path = parts.scheme.lower(), parts.netloc.lower(), parts.path or "/"
        return any(
            scheme == allowed_scheme and netloc in netlocs and (prefix == "/" or (
                not _DOT_SEGMENT.search(path) and (
                    path.startswith(prefix) if prefix.endswith("/")
                    else path == prefix or path.startswith(prefix + "/"))))
            for allowed_scheme, netlocs, prefix in self._allowed)

    def pattern(self) -> str:
        """`admits` as a regular expression (ECMA-262 and Python alike), for /openapi.json."""
        alternatives = []
        for scheme, netlocs, prefix in self._allowed:
            hosts = "|".join(_any_letter_case(n) for n in sorted(netlocs))
            if prefix == "/":
                path = f"(?:[/?#]{_REST})?"
            elif prefix.endswith("/"):
                path = _NO_DOT_SEGMENT + re.escape(prefix) + _REST
            else:
                path = f"{_NO_DOT_SEGMENT}{re.escape(prefix)}(?:[/?#]{_REST})?"
            alternatives.append(f"{_any_letter_case(scheme)}://(?:{hosts}){path}")
        return f"^(?:{'|'.join(alternatives) or '(?!)'})$"


class Checkout:
    """Creates checkout sessions, once per (account, idempotency key)."""

    def __init__(self, pool: asyncpg.Pool, catalog: Catalog, settings: Settings,
                 return_urls: ReturnUrls) -> None:
        self._pool = pool
        self._catalog = catalog
        self._return_urls = return_urls
        self._stripe_http = stripe.HTTPXClient(timeout=TIMEOUT)
        self._stripe = None if not settings.stripe_api_key else stripe.StripeClient(
            settings.stripe_api_key, http_client=self._stripe_http, max_network_retries=1,
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base
            else None)
        self._dodo: dodopayments.AsyncDodoPayments | None = None
        if settings.dodo_api_key and settings.dodo_api_base:
            self._dodo = dodopayments.AsyncDodoPayments(
                bearer_token=settings.dodo_api_key, base_url=settings.dodo_api_base,
                timeout=TIMEOUT, max_retries=1)
        elif settings.dodo_api_key:
            self._dodo = dodopayments.AsyncDodoPayments(
                bearer_token=settings.dodo_api_key, environment="live_mode",
                timeout=TIMEOUT, max_retries=1)

    def request_schema(self) -> dict[str, Any]:
        """What `create` accepts, as JSON Schema for /openapi.json: one alternative per
        provider and offer (a package in one of its currencies, or a pay-as-you-go amount
        within the rate's bounds), and return URLs under BALANCE_CHECKOUT_RETURN_URLS."""
        offers: list[dict[str, Any]] = []
        providers = self._providers()
        sold = self.plans_sold()
        # With plans on sale, an offer of a package or an amount names none; without, the
        # property below says so once (each constraint more is more for a generator to meet).
        no_plan: dict[str, Any] = {"plan": {"type": "null"}} if sold else {}
        for provider in providers:
            for name, package in self._catalog.packages.items():
                if provider == "dodo" and not package.dodo_product:
                    continue
                offers.append({"required": ["package"], "properties": {
                    "provider": {"const": provider}, "package": {"const": name},
                    "amount": {"type": "null"}, **no_plan,
                    "currency": {"anyOf": [_any_case(sorted(package.price)), {"type": "null"}]}}})
            for name, plan in self._catalog.plans.items():
                if plan.product(provider):
                    offers.append({"required": ["plan"], "properties": {
                        "provider": {"const": provider}, "plan": {"const": name},
                        "package": {"type": "null"}, "amount": {"type": "null"},
                        "currency": {"type": "null"}}})
            payg = self._catalog.pay_as_you_go
            if provider == "stripe" and payg is not None:
                for currency in sorted(payg.credits_per_unit):
                    try:
                        step = STRIPE.step(currency)
                    except Unrepresentable:
                        continue
                    lo, hi = self._catalog.payg_amounts(currency)
                    lo, hi = -(-lo // step) * step, hi // step * step
                    if lo > hi:
                        continue
                    amount: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi}
                    if step > 1:  # what Stripe can charge: whole ariary, KWD ending in 0
                        amount["multipleOf"] = step
                    offers.append({"required": ["amount", "currency"], "properties": {
                        "provider": {"const": provider}, "package": {"type": "null"},
                        **no_plan,
                        "amount": amount, "currency": _any_case([currency])}})
        url = {"type": "string", "pattern": self._return_urls.pattern()}
        return {"anyOf": offers or [{"not": {}}], "properties": {
            "success_url": url, "cancel_url": {"anyOf": [url, {"type": "null"}]}}}

    def _providers(self) -> list[str]:
        """The providers this instance is configured for."""
        return [p for p, client in (("stripe", self._stripe), ("dodo", self._dodo)) if client]

    def plans_sold(self) -> list[str]:
        """The catalog plans a checkout can start the subscription of (a configured provider
        sells their product), for /openapi.json."""
        providers = self._providers()
        return sorted(name for name, plan in self._catalog.plans.items()
                      if any(plan.product(p) for p in providers))

    @property
    def stripe_client(self) -> stripe.StripeClient | None:
        """The Stripe client (None without BALANCE_STRIPE_API_KEY), for auto top-up too."""
        return self._stripe

    async def close(self) -> None:
        await self._stripe_http.close_async()  # type: ignore[no-untyped-call]
        if self._dodo is not None:
            await self._dodo.close()

    async def create(
        self, account_id: str, req: CheckoutRequest, fingerprint: bytes
    ) -> tuple[bytes, bool]:
        """`{"url", "provider", "session_id", "credits", "amount", "currency"}`, and whether
        it replays the session an earlier request with this key created."""
        stored = await self._pool.fetchrow(
            "SELECT request_hash, response::text AS response FROM balance.checkouts"
            " WHERE account_id = $1 AND key = $2", account_id, req.idempotency_key)
        if stored is not None:
            if stored["request_hash"] != fingerprint:
                raise errors.idempotency_conflict()
            return stored["response"].encode(), True
        for url in (req.success_url, req.cancel_url):
            if url is not None and not self._return_urls.admits(url):
                raise errors.invalid_request(
                    f"success_url / cancel_url: {url!r} is not under one of "
                    "BALANCE_CHECKOUT_RETURN_URLS (same scheme, host and port; the path at "
                    "a segment boundary; no user or password)")
        metadata: dict[str, str | float | bool] = {"account_id": account_id}
        # The provider dedupes on this too, so a request racing its own retry opens one session.
        provider_key = hashlib.sha256(f"{account_id}\0{req.idempotency_key}".encode()).hexdigest()
        if req.plan is not None:
            product, credits = self._plan_offer(req)
            following: str | None = await self._pool.fetchval(
                "SELECT subscription FROM balance.accounts WHERE account_id = $1", account_id)
            if following is not None:
                # A second subscription would take the plan from the first every period.
                provider, _, subscription = following.partition(":")
                raise errors.invalid_request(
                    f"plan: the account's plan follows its {provider} subscription "
                    f"{subscription}; change the plan there (an upgrade or a downgrade)")
            metadata["plan"] = req.plan
            # Dodo sells a subscription product as any product: its metadata rides on the
            # subscription and its payments.
            session_id, url = await (self._stripe_subscription if req.provider == "stripe"
                                     else self._dodo_create)(req, product, metadata,
                                                             provider_key)
            body: dict[str, Any] = {
                "url": url, "provider": req.provider, "session_id": session_id,
                "credits": credits, "amount": None, "currency": None, "package": None,
                "plan": req.plan}
        else:
            package, credits, amount, currency = self._offer(req)
            if package:
                metadata["package"] = package
            if req.provider == "stripe":
                session_id, url = await self._stripe_session(
                    req, package, credits, amount, currency, metadata, provider_key)
            else:
                session_id, url = await self._dodo_session(req, package, metadata, provider_key)
            body = {"url": url, "provider": req.provider, "session_id": session_id,
                    "credits": credits, "amount": amount, "currency": currency,
                    "package": package, "plan": None}
        text = json.dumps(body, separators=(",", ":"))
        winner: str | None = await self._pool.fetchval(
            """
            INSERT INTO balance.checkouts (account_id, key, request_hash, response)
            VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING RETURNING response::text
            """,
            account_id, req.idempotency_key, fingerprint, text)
        if winner is None:  # a concurrent duplicate stored its session first: answer that one
            return await self.create(account_id, req, fingerprint)
        return winner.encode(), False

    def _plan_offer(self, req: CheckoutRequest) -> tuple[str, int]:
        """(the provider's product, the allowance of one period) of the plan a checkout
        subscribes to; 422 for anything else asked with it, or a plan not sold there."""
        if req.package is not None or req.amount is not None or req.currency is not None:
            raise errors.invalid_request("plan: give a plan, or a package, or an amount; "
                                         "not two")
        found = self._catalog.plans.get(req.plan or "")
        if found is None:
            raise errors.invalid_request(f"plan: no plan {req.plan!r} in the catalog")
        product = found.product(req.provider)
        if product is None:
            field = "stripe_price" if req.provider == "stripe" else "dodo_product"
            raise errors.invalid_request(f"plan: plan {req.plan!r} has no {field}: it is "
                                         f"not sold through {req.provider}")
        return product, found.allowance

    async def _stripe_subscription(
        self, req: CheckoutRequest, price: str, metadata: dict[str, str | float | bool],
        provider_key: str,
    ) -> tuple[str, str]:
        """A Checkout session in subscription mode: its invoices carry the subscription's
        metadata (account_id, plan), and the card it is paid with becomes the customer's
        default, which auto top-up charges."""
        params: dict[str, Any] = {
            "mode": "subscription", "line_items": [{"price": price, "quantity": 1}],
            "success_url": req.success_url, "client_reference_id": metadata["account_id"],
            "metadata": metadata, "subscription_data": {"metadata": metadata},
            "payment_method_collection": "always",
        }
        return await self._stripe_create(req, params, provider_key)

    def _offer(self, req: CheckoutRequest) -> tuple[str | None, int, int, str]:
        """(package, credits, amount in the catalog's minor units, currency) for what is being
        bought; 422 for an amount the provider cannot charge."""
        package, credits, amount, currency = self._priced(req)
        if req.provider == "stripe" and not (
                package and self._catalog.packages[package].stripe_price):
            try:
                STRIPE.to_provider(currency, amount)
            except Unrepresentable as exc:
                field = "currency" if package else "amount"
                raise errors.invalid_request(f"{field}: {exc}") from None
        return package, credits, amount, currency

    def _priced(self, req: CheckoutRequest) -> tuple[str | None, int, int, str]:
        currency = req.currency.lower() if req.currency else None
        if req.package is not None:
            if req.amount is not None:
                raise errors.invalid_request("amount: give a package or an amount, not both")
            found = self._catalog.packages.get(req.package)
            if found is None:
                raise errors.invalid_request(f"package: no package {req.package!r} in the catalog")
            if currency is None:
                currency = found.default_currency()
            price = found.price.get(currency)
            if price is None:
                raise errors.invalid_request(f"currency: package {req.package!r} has no price "
                                             f"in {currency}")
            return req.package, found.credits, price, currency
        if req.amount is None or currency is None:
            raise errors.invalid_request("package: give a package, or an amount and a currency")
        try:
            credits = self._catalog.credits_for(None, req.amount, currency)
        except Unpriced as exc:
            raise errors.invalid_request(f"amount: {exc}") from None
        return None, credits, req.amount, currency

    async def _stripe_session(
        self, req: CheckoutRequest, package: str | None, credits: int, amount: int,
        currency: str, metadata: dict[str, str | float | bool], provider_key: str,
    ) -> tuple[str, str]:
        found = self._catalog.packages.get(package) if package else None
        if found is not None and found.stripe_price:
            item: dict[str, Any] = {"price": found.stripe_price, "quantity": 1}
        else:
            item = {"quantity": 1, "price_data": {
                "currency": currency, "unit_amount": STRIPE.to_provider(currency, amount),
                "product_data": {"name": f"{credits} credits"}}}
        params: dict[str, Any] = {
            "mode": "payment", "line_items": [item], "success_url": req.success_url,
            "client_reference_id": metadata["account_id"], "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
        }
        return await self._stripe_create(req, params, provider_key)

    async def _stripe_create(self, req: CheckoutRequest, params: dict[str, Any],
                             provider_key: str) -> tuple[str, str]:
        """Create a Stripe Checkout session: (its id, its url); 502 when Stripe fails."""
        if self._stripe is None:
            raise errors.invalid_request("provider: BALANCE_STRIPE_API_KEY is not set")
        if req.cancel_url:
            params["cancel_url"] = req.cancel_url
        if req.customer_email:
            params["customer_email"] = req.customer_email
        try:
            session = await self._stripe.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": provider_key},
            )
        except (stripe.StripeError, httpx.HTTPError) as exc:
            log.warning("stripe checkout failed: %s: %s", type(exc).__name__, exc)
            raise errors.provider_unavailable("stripe", type(exc).__name__) from None
        if not session.id or not session.url:
            raise errors.provider_unavailable("stripe", "no session id or url in the answer")
        return session.id, session.url

    async def _dodo_session(
        self, req: CheckoutRequest, package: str | None,
        metadata: dict[str, str | float | bool],
        provider_key: str,
    ) -> tuple[str, str]:
        found = self._catalog.packages.get(package) if package else None
        if found is None or not found.dodo_product:
            raise errors.invalid_request(
                "package: Dodo sells catalog packages with a dodo_product, not amounts")
        return await self._dodo_create(req, found.dodo_product, metadata, provider_key)

    async def _dodo_create(self, req: CheckoutRequest, product: str,
                           metadata: dict[str, str | float | bool],
                           provider_key: str) -> tuple[str, str]:
        """Create a Dodo checkout session for one `product`: (its id, its url); 502 when
        Dodo fails."""
        if self._dodo is None:
            raise errors.invalid_request("provider: BALANCE_DODO_API_KEY is not set")
        try:
            session = await self._dodo.checkout_sessions.create(
                product_cart=[{"product_id": product, "quantity": 1}],
                return_url=req.success_url,
                cancel_url=req.cancel_url,
                metadata=dict(metadata),
                customer={"email": req.customer_email} if req.customer_email
                else dodopayments.omit,
                extra_headers={"Idempotency-Key": provider_key},
            )
        except (dodopayments.APIError, httpx.HTTPError) as exc:
            log.warning("dodo checkout failed: %s: %s", type(exc).__name__, exc)
            raise errors.provider_unavailable("dodo", type(exc).__name__) from None
        if not session.checkout_url:
            raise errors.provider_unavailable("dodo", "no checkout_url in the answer")
        return session.session_id, session.checkout_url


def _any_case(currencies: list[str]) -> dict[str, Any]:
    """A currency code in any letter case (the request's is lower-cased)."""
    codes = "|".join(_any_letter_case(code) for code in currencies)
    return {"type": "string", "pattern": f"^(?:{codes})$"}


def _any_letter_case(text: str) -> str:
    """A regular expression for `text` (ASCII) with its letters in either case."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)
