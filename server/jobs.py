"""Periodic work, in every instance: expire due holds and grants, renew plans whose period
ended, create the PaymentIntents of due auto top-ups (and arm again those a monthly limit
paused once the month turns), and (one instance at a time) delete
old idempotency keys and delivered app webhook events.

Several instances run the same jobs safely: the SQL claims due rows with SKIP LOCKED, and
each change it commits leaves through the ledger's door like any other.
"""

from __future__ import annotations

import asyncio
import logging

from server import metrics, retention
from server.config import Settings
from server.ledger import Ledger
from server.logs import Failures
from server.payments.topup import TopUps
from server.plans import Plans

log = logging.getLogger("balance.jobs")

PRUNE_EVERY = 3600.0  # seconds


class Jobs:
    """The background loop of one process."""

    def __init__(self, ledger: Ledger, plans: Plans, top_ups: TopUps | None,
                 settings: Settings) -> None:
        self._ledger = ledger
        self._plans = plans
        self._top_ups = top_ups
        self._interval = settings.sweep_interval
        self._retention_days = settings.idempotency_retention_days
        self._event_retention_days = settings.event_retention_days
        self._tasks: list[asyncio.Task[None]] = []
        self._sweep_failed = Failures(log, "sweep failed")
        self._top_up_failed = Failures(log, "auto top-up failed")

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="jobs"))
        # Apart: a long prune (batches, with pauses) must not hold up expiries and renewals.
        self._tasks.append(asyncio.create_task(self._run_retention(), name="retention"))
        if self._top_ups is not None:
            # Apart: a slow Stripe must not hold up expiries and renewals.
            self._tasks.append(asyncio.create_task(self._run_top_ups(self._top_ups),
                                                   name="top-ups"))

    async def stop(self) -> None:
        """Stop the loops; bounded, and a cancellation of stop() itself still propagates."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3.0)
        self._tasks = []

    async def _run_top_ups(self, top_ups: TopUps) -> None:
        while True:
            try:
                # Every round: with none paused it reads an empty partial index.
                await top_ups.resume_paused()
                if await top_ups.run_due():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # must outlive a database outage
                self._top_up_failed(exc)
            await asyncio.sleep(self._interval)

    async def _run_retention(self) -> None:
        while True:
            try:
                pruned = await retention.prune(self._ledger.pool, self._retention_days,
                                               self._event_retention_days)
                if pruned.keys or pruned.events:
                    log.info("retention: deleted %d idempotency keys, %d delivered events",
                             pruned.keys, pruned.events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # must outlive a database outage
                log.warning("retention failed: %s", type(exc).__name__)
            await asyncio.sleep(PRUNE_EVERY)

    async def _run(self) -> None:
        while True:
            try:
                await self._ledger.write_settings()  # if the database was down at start
                kinds = await self._ledger.sweep()
                for kind in kinds:
                    metrics.sweeps.labels(kind).inc()
                renewed = await self._plans.renew()
                if renewed:
                    metrics.sweeps.labels("renewal").inc(renewed)
                if kinds or renewed:
                    continue  # more may be due; sweep again at once
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the jobs must outlive a database outage
                self._sweep_failed(exc)
            await asyncio.sleep(self._interval)
