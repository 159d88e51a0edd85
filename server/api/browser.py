"""The browser's read API (user token): its own account and history."""

from __future__ import annotations

from starlette.requests import Request

from server import errors
from server.api.http import checkout_for, history_page, limited_user, resources
from server.ledger import Outcome


async def me(request: Request) -> bytes:
    """The token's account and its latest 20 transactions."""
    identity = await limited_user(request, "me")
    return await resources(request).history.latest(identity.account_id)


async def my_transactions(request: Request) -> bytes:
    """History of the token's account."""
    return await history_page(request, (await limited_user(request, "me")).account_id)


async def my_checkout(request: Request) -> Outcome:
    """A checkout session for the token's account (not for the console's read-only one)."""
    identity = await limited_user(request, "checkout")
    if identity.read_only:
        raise errors.unauthorized("this token is read-only (the console's); it cannot "
                                  "open a checkout")
    return await checkout_for(request, identity.account_id)


async def my_plan(request: Request) -> bytes:
    """The token's account's plan, period, allowance left and limits used."""
    identity = await limited_user(request, "me")
    return await resources(request).plans.dashboard(identity.account_id)
