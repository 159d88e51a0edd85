"""This process's sockets by account, fed by the broker: one upstream subscription per account.

The hub only consumes: frames reach it from the broker (other instances, and the memory
broker) and from this process's publisher (`deliver`), and it writes them to the sockets
of their account. After a broker outage every local socket is resynced from PostgreSQL, and
so is every socket when another instance asks for it (it lost track of what it could not
publish: publisher.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import msgspec

from server import metrics
from server.errors import CLOSE_SERVICE_RESTART, CloseCode
from server.heap import Heap
from server.messages import encoder
from server.push.broker.base import Broker
from server.push.frame import Frame
from server.push.publisher import account_channel, resync_channel
from server.push.snapshots import Snapshot, SnapshotReader

log = logging.getLogger("balance.hub")


class HubSettings(Protocol):
    """The fields of server.config.Settings the hub reads."""

    @property
    def ws_max_sockets_per_account(self) -> int: ...

    @property
    def drain_seconds(self) -> float: ...

    @property
    def channel_prefix(self) -> str: ...


class Listener(Protocol):
    """A local socket as the hub sees it (server.ws.Connection)."""

    def deliver(self, frame: Frame, *, force: bool = False) -> bool:
        """Write (True) or queue a frame; never blocks or raises; never older after newer."""
        ...

    def close(self, code: CloseCode) -> None:
        """Start closing the socket with this code; never blocks."""
        ...


class TooManySockets(Exception):
    """The account already has the maximum number of sockets on this process."""


class HubClosed(Exception):
    """The hub is draining and takes no new sockets."""


class _Head(msgspec.Struct):
    version: int


_head = msgspec.json.Decoder(_Head)


class _Account:
    __slots__ = ("latest", "listeners", "subscribed")

    def __init__(self, subscribed: asyncio.Task[None]) -> None:
        self.listeners: set[Listener] = set()
        self.subscribed = subscribed
        self.latest = 0  # highest version fanned out here: echoes and stale frames stop early


class Hub:
    """Account -> local sockets, fed by the broker and by this process's publisher."""

    def __init__(
        self,
        broker: Broker,
        snapshot: Snapshot,
        settings: HubSettings,
        *,
        canary_interval: float = 2.0,
    ) -> None:
        self.broker = broker
        self._snapshot = snapshot
        self._reads = SnapshotReader(snapshot)
        self._max_sockets = settings.ws_max_sockets_per_account
        self._drain_seconds = settings.drain_seconds
        # Channels: one per account (publisher.account_channel), and one canary per hub.
        self._prefix = account_channel(settings.channel_prefix, "")
        self._canary_channel = f"{settings.channel_prefix}:canary:{uuid.uuid4().hex}"
        self._resync_channel = resync_channel(settings.channel_prefix)
        self._resyncing: asyncio.Task[None] | None = None
        self._resync_next: set[str] | None = set()  # accounts to resync next; None: all
        self._canary_interval = canary_interval
        self._canary_sent_at = 0.0  # monotonic send time of the newest canary seen
        self._accounts: dict[str, _Account] = {}
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._heap = Heap()  # sockets outlive requests: freeze them out of full GC passes
        self._idle = asyncio.Event()  # set while no socket is registered
        self._idle.set()
        self.accepting = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect the broker (retrying in the background if it is down) and start the canary."""
        await self.broker.connect(self._on_message, self._on_reconnect)
        await self.broker.subscribe(self._canary_channel)
        await self.broker.subscribe(self._resync_channel)
        self._tasks = [asyncio.create_task(self._canary(), name="hub-canary")]
        metrics.pubsub_lag.set_function(self.lag)
        metrics.broker_up.set_function(lambda: float(self.ready()))
        self.accepting = True

    async def stop(self) -> None:
        """Refuse new sockets, close ours over `drain_seconds`, then stop the broker."""
        self.accepting = False
        await self.drain()
        for task in self._tasks:
            task.cancel()
        # asyncio.wait: bounded, and a cancellation of stop() itself still propagates
        # (suppressing CancelledError around `await task` would swallow it).
        if self._resyncing is not None:
            self._resyncing.cancel()
            self._tasks.append(self._resyncing)
        pending = {*self._tasks, *self._unsubscribing.values()}
        if pending:
            await asyncio.wait(pending, timeout=3.0)
        self._tasks = []
        self._heap.close()
        await self.broker.disconnect()

    async def drain(self) -> None:
        """Close every local socket with 1012, spread over `drain_seconds` so clients stagger."""
        self.accepting = False
        listeners = list({lst for acct in self._accounts.values() for lst in acct.listeners})
        steps = max(1, min(len(listeners), int(self._drain_seconds * 10)))
        pause = self._drain_seconds / steps
        for i in range(steps):
            for listener in listeners[i::steps]:
                listener.close(CLOSE_SERVICE_RESTART)
            if i < steps - 1:
                await asyncio.sleep(pause)
        # Let the sockets' own tasks unregister; bounded.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=2.0)

    # ------------------------------------------------------------ health

    def lag(self) -> float:
        """Seconds since the newest canary seen was sent (pubsub_lag_seconds)."""
        if self._canary_sent_at == 0.0:
            return float("inf") if self._tasks else 0.0
        return time.monotonic() - self._canary_sent_at

    def ready(self) -> bool:
        """Broker connected and a canary came back through it recently."""
        return self.broker.connected and self.lag() < self._canary_interval * 2.5

    async def _canary(self) -> None:
        """Publish our send time to our own channel: its round trip proves the broker works."""
        while True:
            if self.broker.connected:
                with contextlib.suppress(Exception):  # a failure shows as lag, and in readyz
                    await self.broker.publish(
                        [(self._canary_channel, repr(time.monotonic()).encode())])
            await asyncio.sleep(self._canary_interval)

    # ------------------------------------------------------------ fan-in

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel.startswith(self._prefix):
            account_id = channel[len(self._prefix) :]
            try:
                version = _head.decode(data).version
            except msgspec.DecodeError:
                log.warning("undecodable frame on %s", channel)
                return
            self.deliver(account_id, version, data)
        elif channel == self._canary_channel:
            with contextlib.suppress(ValueError):
                self._canary_sent_at = max(self._canary_sent_at, float(data))
        elif channel == self._resync_channel:
            self._request_resync(None)

    def _on_reconnect(self, channels: frozenset[str]) -> None:
        # What was published on these channels while we were away is gone; that may have
        # been a request to resync everything.
        if self._resync_channel in channels:
            self._request_resync(None)
            return
        start = len(self._prefix)
        self._request_resync({c[start:] for c in channels if c.startswith(self._prefix)})

    def _request_resync(self, accounts: set[str] | None) -> None:
        """Resync the sockets of these accounts (None: all); one run at a time, and the
        accounts asked for meanwhile in one more."""
        if self._resync_next is not None:
            if accounts is None:
                self._resync_next = None
            else:
                self._resync_next |= accounts
        if self._resyncing is not None:
            return

        async def run() -> None:
            try:
                while self._resync_next is None or self._resync_next:
                    wanted, self._resync_next = self._resync_next, set()
                    await self._resync(wanted)
            finally:
                self._resyncing = None

        self._resyncing = asyncio.create_task(run(), name="hub-resync")

    def deliver(self, account_id: str, version: int, data: bytes) -> None:
        """Write a frame to the account's local sockets, unless it is not newer than the last."""
        account = self._accounts.get(account_id)
        if account is None or version <= account.latest:
            return
        account.latest = version
        frame = Frame(account_id, version, data)
        sent = 0
        for listener in account.listeners:
            sent += listener.deliver(frame)
        if sent:
            metrics.frames_sent.inc(sent)

    # ------------------------------------------------------------ sockets

    async def register(self, listener: Listener, account_ids: Sequence[str]) -> None:
        """Add a socket: subscribe its accounts, then send it a snapshot of each."""
        if not self.accepting:
            raise HubClosed()
        for account_id in account_ids:
            account = self._accounts.get(account_id)
            if account is not None and len(account.listeners) >= self._max_sockets:
                raise TooManySockets(account_id)
        waits = []
        for account_id in account_ids:
            account = self._accounts.get(account_id)
            if account is None:
                task = asyncio.create_task(self._subscribe(account_id))
                account = self._accounts[account_id] = _Account(task)
            account.listeners.add(listener)
            self._idle.clear()
            waits.append(account.subscribed)
        try:
            # Subscribed before the snapshot is read: no change can fall between the two.
            await asyncio.gather(*waits)
            await self.send_snapshot(listener, account_ids)
        except BaseException:
            self.unregister(listener, account_ids)
            raise
        self._heap.grew()

    async def send_snapshot(
        self,
        listener: Listener,
        account_ids: Sequence[str],
        *,
        known: Mapping[str, int] | None = None,
    ) -> None:
        """Read the accounts from PostgreSQL and send them to this socket.

        With `known` (a client's sync), only accounts whose version differs are sent, and
        sent even if this socket was already given that version.
        """
        for frame in await self._reads.read(account_ids):
            if known is not None and known.get(frame.account_id) == frame.version:
                continue
            data = encoder.encode(frame)
            shared = Frame(frame.account_id, frame.version, data)
            if listener.deliver(shared, force=known is not None):
                metrics.frames_sent.inc()
            # Others on this account may have missed this version (a lost publish).
            self.deliver(frame.account_id, frame.version, data)

    def unregister(self, listener: Listener, account_ids: Iterable[str]) -> None:
        """Remove a socket; the last one of an account unsubscribes it upstream."""
        for account_id in account_ids:
            account = self._accounts.get(account_id)
            if account is None:
                continue
            account.listeners.discard(listener)
            if not account.listeners:
                del self._accounts[account_id]
                previous = account.subscribed
                task = asyncio.create_task(self._unsubscribe(account_id, previous))
                self._unsubscribing[account_id] = task
        if not self._accounts:
            self._idle.set()

    async def _subscribe(self, account_id: str) -> None:
        # An unsubscribe of the same channel still in flight must reach Redis first.
        pending = self._unsubscribing.get(account_id)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        await self.broker.subscribe(self._prefix + account_id)

    async def _unsubscribe(self, account_id: str, subscribed: asyncio.Task[None]) -> None:
        try:
            with contextlib.suppress(Exception):
                await subscribed
            if account_id not in self._accounts:  # nobody came back meanwhile
                await self.broker.unsubscribe(self._prefix + account_id)
        finally:
            if self._unsubscribing.get(account_id) is asyncio.current_task():
                del self._unsubscribing[account_id]

    async def _resync(self, wanted: set[str] | None) -> None:
        """After a broker reconnect: the local sockets of these accounts (None: of every
        account) get their current state."""
        if wanted is None:
            account_ids = list(self._accounts)
        else:
            account_ids = [a for a in wanted if a in self._accounts]
        log.info("resyncing %d accounts after broker reconnect", len(account_ids))
        for start in range(0, len(account_ids), 500):
            chunk = [a for a in account_ids[start : start + 500] if a in self._accounts]
            for attempt in range(5):
                try:
                    frames = await self._snapshot(chunk)
                    break
                except Exception as exc:
                    log.warning("resync snapshot failed (attempt %d): %r", attempt + 1, exc)
                    await asyncio.sleep(0.5 * (attempt + 1))
            else:
                continue
            for frame in frames:
                data = encoder.encode(frame)
                account = self._accounts.get(frame.account_id)
                if account is None:
                    continue
                shared = Frame(frame.account_id, frame.version, data)
                account.latest = max(account.latest, frame.version)
                sent = sum(listener.deliver(shared) for listener in account.listeners)
                metrics.frames_sent.inc(sent)

    @property
    def socket_count(self) -> int:
        """Distinct local sockets (for tests and metrics)."""
        return len({lst for acct in self._accounts.values() for lst in acct.listeners})
