"""The one reach into uvicorn (server/push/transport.py): fails loudly when uvicorn changes."""

from __future__ import annotations

import asyncio
import inspect
import json
from importlib.metadata import version
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import connect

from server.auth import mint_token
from server.push.hub import Hub
from server.push.transport import FramesProtocol
from server.push.ws import Connection
from tests.conftest import RunningApp


def test_uvicorn_is_the_pinned_minor_version() -> None:
    major, minor = (int(part) for part in version("uvicorn").split(".")[:2])
    assert (major, minor) == (0, 54), (
        "transport.py builds on uvicorn 0.54's websockets-sansio protocol; check it against "
        "this version, then move the pin in pyproject.toml")


def test_what_transport_py_uses_of_uvicorn_is_there() -> None:
    base = WebSocketsSansIOProtocol
    assert FramesProtocol.__mro__[1] is base
    for method in ("handle_connect", "shutdown", "connection_lost"):
        assert callable(getattr(base, method, None)), method
    assert list(inspect.signature(base.handle_connect).parameters) == ["self", "event"]
    assert list(inspect.signature(base.shutdown).parameters) == ["self"]
    assert list(inspect.signature(base.connection_lost).parameters) == ["self", "exc"]
    init = inspect.getsource(base)
    for attribute in ("self.transport", "self.writable", "self.close_sent", "self.disconnected",
                      "self.handshake_complete", "self.loop"):
        assert attribute in init, attribute
    assert "self.scope" in inspect.getsource(base.handle_connect)
    assert '"extensions"' in inspect.getsource(base.handle_connect)


async def test_frames_reach_the_socket_through_the_protocol(
    app: RunningApp, account: str
) -> None:
    asgi: Any = app.server.config.app
    hub: Hub = asgi.state.resources.hub
    token = mint_token(app.settings.token_secret, account, 600)[0]
    async with connect(f"{app.ws_url}?token={token}") as ws:
        assert json.loads(await ws.recv())["version"] == 0
        (conn,) = hub._accounts[account].listeners
        assert isinstance(conn, Connection)
        assert isinstance(conn._proto, FramesProtocol)
        hub.deliver(account, 7, b'{"type":"balance","version":7}')
        async with asyncio.timeout(5):
            assert json.loads(await ws.recv()) == {"type": "balance", "version": 7}
