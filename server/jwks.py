"""The app's JWT signing keys: from a JWKS file, or a JWKS URL fetched off the event loop.

Verification never waits on the network. The URL is fetched at start and refreshed in the
background every REFRESH seconds; a token naming an unknown `kid` is refused at once and
asks for one early refresh, at most once a minute, so a flood of made-up `kid`s costs the
key server one request a minute and the event loop nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
import jwt

from server.logs import Failures

log = logging.getLogger("balance.jwks")

REFRESH = 300.0  # seconds between scheduled fetches
MIN_GAP = 60.0  # seconds between fetches asked for by unknown kids
TIMEOUT = 5.0


class KeySet:
    """kid -> key, replaced whole on every successful fetch."""

    def __init__(self, *, file: str | None = None, url: str | None = None) -> None:
        self._url = url
        self._keys: dict[str | None, Any] = {}
        self._fetched_at = 0.0
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fetch_failed = Failures(log, "could not fetch BALANCE_JWKS_URL")
        if file:
            with open(file) as f:
                self._load(f.read())

    def _load(self, text: str) -> None:
        keys: dict[str | None, Any] = {}
        for key in jwt.PyJWKSet.from_json(text).keys:
            keys[key.key_id] = key.key
        self._keys = keys

    async def start(self) -> None:
        """Fetch the URL once (a failure is logged, not fatal) and keep it fresh."""
        if self._url is None:
            return
        await self._fetch()
        self._task = asyncio.create_task(self._refresh(), name="jwks-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=3.0)
            self._task = None

    def key(self, kid: str | None) -> Any:
        """The key for `kid` (None: the only key there is); InvalidKeyError otherwise."""
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        found = self._keys.get(kid)
        if found is None:
            if self._url is not None:
                self._wanted.set()  # a key rotated in since the last fetch, maybe
            raise jwt.InvalidKeyError(f"no signing key {kid!r}")
        return found

    async def _refresh(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), REFRESH)
            self._wanted.clear()
            gap = MIN_GAP - (time.monotonic() - self._fetched_at)
            if gap > 0:
                await asyncio.sleep(gap)
            await self._fetch()

    async def _fetch(self) -> None:
        assert self._url is not None
        self._fetched_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                response = await client.get(self._url)
                response.raise_for_status()
            self._load(response.text)
        except (httpx.HTTPError, jwt.PyJWTError, ValueError) as exc:
            self._fetch_failed(exc)
