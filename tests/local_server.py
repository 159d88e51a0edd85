"""A real HTTP server on loopback for the length of a `with`: what tests stand up in place of
a payment provider's API or an app's webhook endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from server.dev.servers import free_port


@contextlib.asynccontextmanager
async def local_server(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL. On the way out, requests
    still held open (a receiver told to hang) are cut."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task
