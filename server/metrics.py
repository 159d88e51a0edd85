"""Every Prometheus metric the server exports, in one place (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
