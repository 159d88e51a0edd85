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

from server import metrics
from server.audit import Audit
from server.config import Settings, standard_webhooks_key
from server.logs import Failures

log = logging.getLogger("balance.outbox")
# httpx logs every request at INFO: one line per delivery is the outbox's to write, on failure.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Deliveries claimed at once, and claimed and unrecorded in all: while one batch's attempts
# are being recorded the next batch is on the wire. Four connections to the app: httpx's pool
# gets slower per request as it grows (measured: 4 connections send twice what 64 do).
BATCH = 4
CONCURRENCY = 8
CONNECTIONS = 4
IDLE = 0.05  # seconds between polls when nothing is due (an indexed, empty read)


STATUSES = ("pending", "delivered", "failed")


async def events_page(pool: asyncpg.Pool, status: str | None, limit: int,
                      before: int | None, account_id: str | None) -> bytes:
    """GET /v1/events: `{"events": [...], "next"}`, newest first, with every attempt."""
    text: str = await pool.fetchval("SELECT balance.balance_events_json($1, $2, $3, $4)::text",
                                    status, limit, before, account_id)
    return text.encode()


async def retry(pool: asyncpg.Pool, event_id: int, audit: Audit) -> str | None:
    """Make an event due now again, whatever its status; its webhook-id, or None. Audited."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT * FROM balance.balance_retry_event($1)", event_id)
        if row is None:
            return None
        await audit.record(conn, account_id=row["account_id"])
    webhook_id: str = row["webhook_id"]
    return webhook_id


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
        self._client = httpx.AsyncClient(
            timeout=settings.app_webhook_timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=CONNECTIONS,
                                max_keepalive_connections=CONNECTIONS))
        self._busy = 0  # events claimed and not yet recorded
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._claim_failed = Failures(log, "outbox claim failed")
        self._record_failed = Failures(log, "outbox could not record attempts")

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
                drained = await self._claim()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the dispatcher must outlive a database outage
                self._claim_failed(exc)
                drained = True
            if drained:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE)

    async def _claim(self) -> bool:
        """Claim what this instance has room for; whether that emptied the due queue."""
        while self._busy >= CONCURRENCY:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
        room = min(BATCH, CONCURRENCY - self._busy)
        rows = await self._pool.fetch(
            "SELECT id, webhook_id, type, data::text AS data, attempts, created_at"
            " FROM balance.balance_claim_events($1, $2)", room, self._lease)
        if rows:
            self._busy += len(rows)
            task = asyncio.create_task(self._deliver(rows))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows) < room

    async def _deliver(self, rows: list[asyncpg.Record]) -> None:
        """POST each claimed event at once, then record every attempt in one statement."""
        try:
            results = await asyncio.gather(*(self._post(row) for row in rows))
        finally:
            self._busy -= len(rows)
        attempts = [row["attempts"] for row in rows]
        try:
            await self._pool.execute(
                "SELECT balance.balance_record_attempt(e, a, s, l, x, r) FROM unnest("
                "$1::bigint[], $2::int[], $3::int[], $4::int[], $5::text[], $6::float8[])"
                " AS t(e, a, s, l, x, r)",
                [row["id"] for row in rows], attempts, [r[0] for r in results],
                [r[1] for r in results], [r[2] for r in results],
                [self._retry[a - 1] if a <= len(self._retry) else None for a in attempts])
        except Exception as exc:  # their leases run out and they go again: at least once
            self._record_failed(exc)
        for row, (_, _, error) in zip(rows, results, strict=True):
            if error is not None:
                log.info("app webhook %s (%s) attempt %d: %s", row["webhook_id"], row["type"],
                         row["attempts"], error)

    async def _post(self, row: asyncpg.Record) -> tuple[int | None, int, str | None]:
        """(the receiver's status, milliseconds, what went wrong) of one signed POST."""
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
        try:
            # One deadline for the whole attempt, waiting for a connection included: httpx's
            # timeout applies to each phase apart, and the lease must outlast the attempt.
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(self._url, content=payload, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
            else:  # since the event's creation (its transaction's now(): the database's clock)
                age = datetime.now(UTC) - row["created_at"]
                metrics.app_webhook_delivery.observe(max(0.0, age.total_seconds()))
        except (httpx.HTTPError, TimeoutError) as exc:
            error = type(exc).__name__
        return status, int((time.perf_counter() - started) * 1000), error
