"""Sockets upgraded but not yet authenticated: bounded per process and per client address.

A socket that authenticates by its first frame waits here from its upgrade to that frame
(at most `ws_auth_timeout`). Opening one costs a client nothing, so they are bounded: at most
`ws_max_unauthenticated` per process and `ws_max_unauthenticated_per_address` per client
address. When either is full, the oldest socket waiting there is closed (4408, as if its
time were up) to make room, instead of the newcomer being refused:

- refusing let anyone keep every new socket out: a thousand places, ten seconds each, are
  held by a hundred upgrades a second. Evicting the oldest instead shortens the wait a
  flood leaves each socket (places / rate: 1,000 / 2,000 a second is half a second) but
  never shuts out a client that sends its auth frame at once, as the JS client does;
- per address first, so a flood from one address churns only its own places and costs
  nobody else anything (IPv6 addresses are counted by their /64, which one host is given
  whole). Behind a load balancer every socket comes from its address: raise the
  per-address cap to the process's, and the process cap alone applies (still evicting).

A token on the URL (`?token=`) authenticates at the upgrade and never waits here.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Protocol

from server import metrics

_EVICTED_FOR_ADDRESS = metrics.ws_evicted.labels("address")
_EVICTED_FOR_PROCESS = metrics.ws_evicted.labels("process")


class Waiting(Protocol):
    """A socket waiting for its auth frame (server.push.ws.Connection)."""

    def evict(self) -> None:
        """Close at once: another socket needs the place (the lobby has let go of it)."""
        ...


def address_key(host: str) -> str:
    """What one client is counted by: its IPv4 address, or the /64 of its IPv6 one."""
    if ":" not in host:
        return host  # IPv4 (or no address at all): as it is, unparsed on every handshake
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if not isinstance(ip, ipaddress.IPv6Address):
        return host
    if ip.ipv4_mapped is not None:  # a dual-stack listener's IPv4 client
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class Lobby:
    """The process's sockets waiting to authenticate, oldest first, overall and by address."""

    __slots__ = ("_all", "_by_address", "_capacity", "_per_address")

    def __init__(self, capacity: int, per_address: int) -> None:
        self._capacity = capacity
        self._per_address = per_address
        self._all: OrderedDict[Waiting, str] = OrderedDict()  # socket -> its address key
        self._by_address: dict[str, OrderedDict[Waiting, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def enter(self, socket: Waiting, host: str) -> None:
        """Hold a place for `socket`; the oldest of its address (or of the process) is
        evicted when full."""
        address = address_key(host)
        mine = self._by_address.get(address)
        if mine is None:
            mine = self._by_address[address] = OrderedDict()
        evicted: Waiting | None = None
        if len(mine) >= self._per_address:
            evicted = next(iter(mine))
            _EVICTED_FOR_ADDRESS.inc()
        elif len(self._all) >= self._capacity:
            evicted = next(iter(self._all))
            _EVICTED_FOR_PROCESS.inc()
        if evicted is not None:
            self.leave(evicted)  # before it is closed: its close calls leave() again
            evicted.evict()
            mine = self._by_address.setdefault(address, mine)
        mine[socket] = None
        self._all[socket] = address

    def leave(self, socket: Waiting) -> None:
        """The socket authenticated or closed (a socket not here is ignored)."""
        address = self._all.pop(socket, None)
        if address is None:
            return
        mine = self._by_address[address]
        del mine[socket]
        if not mine:
            del self._by_address[address]
