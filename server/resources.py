"""What the lifespan opens and every handler reaches through `request.app.state.resources`."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from server.auth import TokenVerifier
from server.catalog import Catalog
from server.config import ServiceKey, Settings
from server.history import History
from server.ledger import Ledger
from server.limiter import RateLimits
from server.outbox import Outbox
from server.payments.checkout import Checkout
from server.payments.fulfilment import Fulfilment
from server.plans import Plans
from server.push.hub import Hub
from server.push.lobby import Lobby


@dataclass(frozen=True, slots=True)
class Resources:
    """The process's open resources, typed, for handlers."""

    settings: Settings
    catalog: Catalog
    pool: asyncpg.Pool
    ledger: Ledger
    plans: Plans
    outbox: Outbox | None  # None without BALANCE_APP_WEBHOOK_URL
    history: History
    fulfilment: Fulfilment
    checkout: Checkout
    tokens: TokenVerifier
    limits: RateLimits
    hub: Hub
    lobby: Lobby  # sockets waiting for their auth frame
    service_keys: tuple[ServiceKey, ...]
