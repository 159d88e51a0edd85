"""Every Prometheus metric the server exports, in one place (default registry)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator

import asyncpg
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server import __version__
from server.logs import Failures

log = logging.getLogger("balance.metrics")

build_info = Info("balance_build", "The running server's version (the value is always 1)")
build_info.info({"version": __version__})

# HTTP
http_requests = Counter(
    "balance_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
http_latency = Histogram(
    "balance_http_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# Ledger
debits = Counter("balance_debits_total", "Committed debits (debit, charge, capture)")
insufficient = Counter("balance_insufficient_credits_total", "Requests refused with 402")
credits = Counter("balance_credits_total", "Committed credits", ["kind"])
idempotent_replays = Counter("balance_idempotent_replays_total", "Requests answered by replay")
batch_size = Histogram(
    "balance_group_commit_batch_size",
    "Ledger movements sent together in one round trip",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
sweeps = Counter("balance_sweeper_changes_total", "Holds and lots expired by the sweeper", ["what"])

# Push
sockets_connected = Gauge("balance_ws_connected_sockets", "Open authenticated WebSockets")
frames_sent = Counter("balance_ws_frames_sent_total", "Frames written to sockets")
frames_conflated = Counter(
    "balance_ws_frames_conflated_total", "Frames replaced by a newer one before being sent"
)
publish_failures = Counter("balance_publish_failures_total", "Broker publishes that failed")
pubsub_lag = Gauge("pubsub_lag_seconds", "Age of the last canary seen through the broker")
broker_up = Gauge("balance_broker_up", "1 while the broker delivers (a canary came back)")

# App webhooks
app_webhook_delivery = Histogram(
    "balance_app_webhook_delivery_seconds",
    "From an event's creation to the app's 2xx for it, retries included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000, 86400),
)

# Payments
purchases = Counter("balance_purchases_total", "Purchases credited from webhooks", ["provider"])
reversals = Counter("balance_reversals_total", "Refund reversals applied", ["provider"])
disputes = Counter(
    "balance_disputes_total", "Dispute changes applied (credits taken or given back)",
    ["provider", "result"],
)
signatures_rejected = Counter(
    "balance_webhook_signatures_rejected_total",
    "Webhooks refused for their signature",
    ["provider"],
)

# Rate limits and admission
rate_limit_unchecked = Counter(
    "balance_rate_limit_unchecked_total",
    "Calls let through without a check because the limit's store erred or was slow",
    ["limit"],
)
ws_admission_failures = Counter(
    "balance_ws_admission_failures_total",
    "Sockets refused 500 at the handshake, or closed 4500 while authenticating or joining,"
    " by a failure inside the server",
    ["stage"],  # handshake, auth, join
)
ws_evicted = Counter(
    "balance_ws_unauthenticated_evicted_total",
    "Sockets waiting for their auth frame closed 4408 to make room for a newer one, because"
    " their client address's places or the process's were all taken",
    ["full"],  # address, process
)


class DatabaseGauges(Collector):
    """Gauges made when /metrics is scraped: the pool's connections, and counts read from
    PostgreSQL at most once every FRESH seconds however often it is scraped (the outbox's
    pending and failed events, the payments an operator must review)."""

    FRESH = 5.0  # seconds
    # One round trip, each count reading one index (events_status_idx, the partial
    # webhook_events_unfulfilled_open_idx). A payment needing review is a paid event that
    # could not be fulfilled and is not yet resolved (schema.sql "webhook_events_unfulfilled").
    SQL = """
        SELECT (SELECT count(*) FROM balance.events WHERE status = 'pending') AS pending,
               (SELECT count(*) FROM balance.events WHERE status = 'failed') AS failed,
               (SELECT count(*) FROM balance.webhook_events_unfulfilled
                 WHERE resolved_at IS NULL) AS needs_review
    """

    def __init__(self) -> None:
        # The lifespans' pools, newest last: one in a server, several in a test run.
        self._pools: list[asyncpg.Pool] = []
        self._counts: asyncpg.Record | None = None
        self._at = -math.inf  # monotonic time of the counts
        self._counting = False
        self._failed = Failures(log, "metrics: could not count events and payments")

    @property
    def _pool(self) -> asyncpg.Pool | None:
        return self._pools[-1] if self._pools else None

    def watch(self, pool: asyncpg.Pool) -> None:
        """Read from this pool (a lifespan's, just opened)."""
        self._pools.append(pool)

    def forget(self, pool: asyncpg.Pool) -> None:
        """The pool is closing: stop reading from it."""
        self._pools.remove(pool)

    async def refresh(self) -> None:
        """Count again if the counts are over FRESH seconds old. One count at a time: a
        scrape meanwhile answers with the counts there are."""
        pool = self._pool
        if pool is None or self._counting or time.monotonic() - self._at < self.FRESH:
            return
        self._counting = True
        try:
            self._counts = await asyncio.wait_for(pool.fetchrow(self.SQL), 2)
        except Exception as exc:  # /metrics still answers, without these gauges
            self._failed(exc)
            self._counts = None
        finally:
            self._at = time.monotonic()
            self._counting = False
        self._failed = Failures(log, "metrics: could not count events and payments")

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return self._families(self._pool, self._counts)

    @staticmethod
    def _families(pool: asyncpg.Pool | None = None,
                  counts: asyncpg.Record | None = None) -> Iterator[GaugeMetricFamily]:
        events = GaugeMetricFamily("balance_outbox_events",
                                   "App webhook events not delivered, by status", labels=["status"])
        review = GaugeMetricFamily("balance_payments_needing_review",
                                   "Paid events that could not be fulfilled, not yet resolved")
        if counts is not None:
            events.add_metric(["pending"], counts["pending"])
            events.add_metric(["failed"], counts["failed"])
            review.add_metric([], counts["needs_review"])
        size = GaugeMetricFamily("balance_db_pool_size", "PostgreSQL connections open")
        in_use = GaugeMetricFamily("balance_db_pool_in_use", "PostgreSQL connections lent out")
        most = GaugeMetricFamily("balance_db_pool_max_size", "PostgreSQL connections at most")
        if pool is not None:
            size.add_metric([], pool.get_size())
            in_use.add_metric([], pool.get_size() - pool.get_idle_size())
            most.add_metric([], pool.get_max_size())
        yield from (events, review, size, in_use, most)


database = DatabaseGauges()
REGISTRY.register(database)
