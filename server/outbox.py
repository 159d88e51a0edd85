"""App webhooks: the outbox's dispatcher, in every instance.

Events are rows written by PostgreSQL in the transaction of the change they tell of
(schema.sql "alerts"), so none is lost when a process dies. Each instance claims due rows
for a lease (`balance_claim_events`, SKIP LOCKED: no two instances hold one), POSTs them
signed per Standard Webhooks with the `standardwebhooks` library, and records every attempt.
A 2xx is delivered; anything else, or no answer within the timeout, is tried again on the
contract's schedule with the same `webhook-id`, then marked failed. An instance that dies
mid-delivery loses its lease, and another delivers the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime

import asyncpg
import httpx
from standardwebhooks.webhooks import Webhook

from server.config import Settings, standard_webhooks_key

log = logging.getLogger("balance.outbox")

BATCH = 50  # events claimed at once
CONCURRENCY = 16  # deliveries in flight per instance
IDLE = 0.2  # seconds between polls when nothing is due


class Outbox:
    """Delivers due events to BALANCE_APP_WEBHOOK_URL until stopped."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        assert settings.app_webhook_url and settings.app_webhook_secret
        self._pool = pool
        self._url = settings.app_webhook_url
        self._signer = Webhook(standard_webhooks_key("BALANCE_APP_WEBHOOK_SECRET",
                                                     settings.app_webhook_secret))
        self._timeout = settings.app_webhook_timeout
        self._retry = settings.app_webhook_retry
        self._lease = max(settings.outbox_lease, settings.app_webhook_timeout + 1)
        self._client = httpx.AsyncClient(timeout=settings.app_webhook_timeout,
                                         follow_redirects=False)
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    def wake(self) -> None:
        """An event may be due now (a retry was asked for): poll without waiting."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; deliveries in flight get their timeout to finish (what does not
        finish is claimed again by someone once its lease ends)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=3.0)
            self._task = None
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self._timeout + 1)
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the dispatcher must outlive a database outage
                log.warning("outbox claim failed: %s", type(exc).__name__)
                claimed = 0
            if claimed < BATCH:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE)

    async def _claim(self) -> int:
        free = CONCURRENCY - len(self._inflight)
        if free <= 0:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            free = CONCURRENCY - len(self._inflight)
        rows = await self._pool.fetch(
            "SELECT id, webhook_id, type, data::text AS data, attempts, created_at"
            " FROM balance_claim_events($1, $2)", min(BATCH, free), self._lease)
        for row in rows:
            task = asyncio.create_task(self._deliver(row))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows)

    async def _deliver(self, row: asyncpg.Record) -> None:
        payload = json.dumps({
            "type": row["type"],
            "timestamp": row["created_at"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "data": json.loads(row["data"]),
        }, separators=(",", ":"))
        sent = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": row["webhook_id"],
            "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": self._signer.sign(row["webhook_id"], sent, payload),
        }
        status: int | None = None
        error: str | None = None
        started = time.perf_counter()
        async with self._slots:
            try:
                response = await self._client.post(self._url, content=payload, headers=headers)
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
        latency = int((time.perf_counter() - started) * 1000)
        attempt: int = row["attempts"]
        retry_in = self._retry[attempt - 1] if attempt <= len(self._retry) else None
        try:
            await self._pool.execute(
                "SELECT balance_record_attempt($1, $2, $3, $4, $5, $6)",
                row["id"], attempt, status, latency, error, retry_in)
        except Exception as exc:  # its lease runs out and it is delivered again: at least once
            log.warning("outbox could not record event %s: %s", row["id"], type(exc).__name__)
        if error is not None:
            log.info("app webhook %s (%s) attempt %d: %s", row["webhook_id"], row["type"],
                     attempt, error)
