"""Sockets waiting for their auth frame: bounded per process and per address, the oldest
making room (push/lobby.py); a token on the URL never waits. The flood of upgrades from
one address is in test_floods.py."""

from __future__ import annotations

import json
import uuid

import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect

from server.auth import mint_token
from server.push.lobby import Lobby, address_key
from tests.conftest import StartApp
from tests.push.test_ws import close_code, recv


class Socket:
    def __init__(self, name: str, lobby: Lobby) -> None:
        self.name, self.lobby, self.evicted = name, lobby, False

    def evict(self) -> None:
        self.evicted = True
        self.lobby.leave(self)  # as Connection's close does: a second leave is nothing

    def __repr__(self) -> str:
        return self.name


def evicted(full: str) -> float:
    return REGISTRY.get_sample_value("balance_ws_unauthenticated_evicted_total",
                                     {"full": full}) or 0.0


def test_the_oldest_of_the_address_then_of_the_process_makes_room() -> None:
    counted = evicted("address"), evicted("process")
    lobby = Lobby(capacity=4, per_address=2)
    a1, a2, a3, b1, c1, d1 = (Socket(n, lobby) for n in ("a1", "a2", "a3", "b1", "c1", "d1"))
    lobby.enter(a1, "10.0.0.1")
    lobby.enter(a2, "10.0.0.1")
    lobby.enter(a3, "10.0.0.1")  # its address is full: its own oldest goes
    assert (a1.evicted, a2.evicted, len(lobby)) == (True, False, 2)
    lobby.enter(b1, "10.0.0.2")
    lobby.leave(b1)  # authenticated
    lobby.enter(b1, "10.0.0.2")
    lobby.enter(c1, "10.0.0.3")  # the process is full now: a2, a3, b1, c1
    lobby.enter(d1, "10.0.0.4")  # the process's oldest goes, whatever its address
    assert a2.evicted and not any(s.evicted for s in (a3, b1, c1, d1))
    assert len(lobby) == 4
    for s in (a3, b1, c1, d1, a1):
        lobby.leave(s)
    assert len(lobby) == 0 and lobby._by_address == {}
    assert (evicted("address"), evicted("process")) == (counted[0] + 1, counted[1] + 1)


@pytest.mark.parametrize(("host", "key"), [
    ("203.0.113.9", "203.0.113.9"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),  # one host holds its whole /64
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.9", "203.0.113.9"),  # a dual-stack listener's IPv4 client
    ("", ""),
])
def test_addresses_are_counted_by_client(host: str, key: str) -> None:
    assert address_key(host) == key


async def test_a_full_lobby_closes_its_oldest_4408_and_a_url_token_never_waits(
    start_app: StartApp,
) -> None:
    app = await start_app(ws_max_unauthenticated=3, ws_max_unauthenticated_per_address=2,
                          ws_auth_timeout=5.0)
    lobby = app.asgi.state.resources.lobby
    account = f"lobby-{uuid.uuid4().hex[:8]}"
    token = mint_token(app.settings.token_secret, account, 600)[0]
    try:
        a1 = await connect(app.ws_url)
        a2 = await connect(app.ws_url)
        a3 = await connect(app.ws_url)  # 127.0.0.1 is full: a1, its oldest, makes room
        assert await close_code(a1) == 4408
        b1 = await connect(app.ws_url, local_addr=("127.0.0.2", 0))
        assert len(lobby) == 3  # a2, a3, b1: the process is full
        c1 = await connect(app.ws_url, local_addr=("127.0.0.3", 0))  # a2 is the oldest
        assert await close_code(a2) == 4408
        async with connect(f"{app.ws_url}?token={token}") as direct:
            assert (await recv(direct))["account_id"] == account
        assert len(lobby) == 3, "a token on the URL took no place and closed nobody"
        for ws in (a3, b1, c1):  # those left authenticate by their first frame as usual
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert (await recv(ws))["type"] == "balance"
        assert len(lobby) == 0
        for ws in (a3, b1, c1):
            await ws.close()
    finally:
        await app.stop()
