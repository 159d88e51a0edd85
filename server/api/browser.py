"""The browser's read API (user token): its own account and history."""

from __future__ import annotations

from starlette.requests import Request

from server.api.http import history_page, resources, user


async def me(request: Request) -> bytes:
    """The token's account and its latest 20 transactions."""
    identity = user(request)
    return await resources(request).history.latest(identity.account_id)


async def my_transactions(request: Request) -> bytes:
    """History of the token's account."""
    return await history_page(request, user(request).account_id)
