"""create_app(settings): the ASGI app, whose lifespan owns the pool, broker, hub and jobs."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, WebSocketRoute

from server import metrics
from server.api import ops
from server.api.cors import BrowserCors
from server.api.http import exception_handlers
from server.api.request_ids import RequestIds
from server.api.routes import routes as api_routes
from server.auth import TokenVerifier
from server.catalog import load as load_catalog
from server.config import Settings
from server.console import routes as console
from server.currencies import STRIPE
from server.db import DB_DOWN, open_pool
from server.history import History
from server.jobs import Jobs
from server.ledger import Ledger
from server.limiter import RateLimits
from server.outbox import Outbox
from server.payments.checkout import Checkout, ReturnUrls
from server.payments.fulfilment import Fulfilment
from server.payments.topup import TopUps
from server.plans import Plans
from server.push.broker import make_broker
from server.push.hub import Hub
from server.push.lobby import Lobby
from server.push.publisher import Publisher
from server.push.ws import PATH as WS_PATH
from server.push.ws import RESOURCES, misconfigured
from server.resources import Resources

log = logging.getLogger("balance.app")


def create_app(settings: Settings, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    """The ASGI application for these settings (`extra_routes`: the dev routes).

    The catalog is read here, before anything is served: a bad file (or, with Stripe, a
    price Stripe cannot charge) raises CatalogError, a bad return URL ConfigError.
    """
    catalog = load_catalog(settings.catalog_file, settings.prices_file,
                           charged_by=(STRIPE,) if settings.stripe_api_key else ())
    return_urls = ReturnUrls(settings.checkout_return_urls)
    rate_limits = RateLimits(settings.rate_limits, settings.redis_url, settings.channel_prefix)
    if not settings.allowed_origins:
        log.warning("BALANCE_ALLOWED_ORIGINS is empty: pages of any origin may open a "
                    "WebSocket here (a user token is still required)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Resources]]:
        pool = await open_pool(settings)
        metrics.database.watch(pool)
        ledger = Ledger(pool, settings.welcome_credits, settings.db_batch_inflight)
        broker = make_broker(settings.redis_url)
        hub = Hub(broker, snapshot=ledger.snapshot, settings=settings)
        publisher = Publisher(broker, hub.deliver, settings.channel_prefix, ledger.snapshot)
        ledger.on_commit(publisher.publish)
        outbox = Outbox(pool, settings) if settings.app_webhook_url else None
        plans = Plans(ledger, catalog)
        ledger.configure(settings.app_webhook_events if settings.app_webhook_url else None,
                         catalog.alerts.low_balance)
        with contextlib.suppress(*DB_DOWN):  # else the jobs loop writes them when it is up
            await ledger.write_settings()
        await plans.sync()
        checkout = Checkout(pool, catalog, settings, return_urls)
        client = checkout.stripe_client
        top_ups = TopUps(pool, catalog, client) if client is not None else None
        jobs = Jobs(ledger, plans, top_ups, settings)
        tokens = TokenVerifier(settings)
        app.state.resources = resources = Resources(
            settings=settings,
            catalog=catalog,
            pool=pool,
            ledger=ledger,
            plans=plans,
            outbox=outbox,
            history=History(ledger),
            fulfilment=Fulfilment(ledger, catalog, settings.refund_policy),
            checkout=checkout,
            tokens=tokens,
            limits=rate_limits,
            hub=hub,
            lobby=Lobby(settings.ws_max_unauthenticated,
                        settings.ws_max_unauthenticated_per_address),
            service_keys=settings.service_keys,
        )
        await tokens.start()  # the app's JWKS, fetched before the first request
        await hub.start()  # connects the broker
        await rate_limits.start()
        publisher.start()
        jobs.start()
        if outbox is not None:
            outbox.start()
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's generations so full collections (pauses) stay short under many sockets.
        gc.freeze()
        try:
            # The lifespan state reaches every connection uvicorn opens: the WebSocket
            # protocol (push/ws.py) finds the resources there, outside any request.
            yield {RESOURCES: resources}
        finally:
            await jobs.stop()
            if outbox is not None:
                await outbox.stop()
            await publisher.stop()
            await hub.stop()  # drains what is left, disconnects the broker
            await checkout.close()
            await tokens.stop()
            metrics.database.forget(pool)
            await pool.close()

    app = Starlette(
        routes=[*api_routes(), *ops.routes(), *console.routes(),
                WebSocketRoute(WS_PATH, misconfigured),
                *(extra_routes or [])],
        middleware=[
            Middleware(RequestIds),  # outermost: every answer carries the id, even a 500
            Middleware(ops.MetricsMiddleware),
            *([Middleware(BrowserCors, origins=settings.allowed_origins)]
              if settings.allowed_origins else []),
        ],
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
    )
    return app
