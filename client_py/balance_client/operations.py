"""Which method covers each operation of the API (its OpenAPI operationId), and the
operations this SDK leaves out on purpose, with why. A test holds this table to the
server's /openapi.json: an operation or a request field no method takes fails it."""

from __future__ import annotations

# operationId -> the AsyncBalance / Balance methods that call it.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "get_account": ("get_account",),
    "open_account": ("open_account",),
    "debit": ("debit",),
    "credit": ("credit",),
    "adjust": ("adjust",),
    "charge": ("charge",),
    "check": ("check",),
    "place_hold": ("place_hold", "reserve"),
    "capture_hold": ("capture_hold",),
    "release_hold": ("release_hold",),
    "list_transactions": ("list_transactions", "iter_transactions"),
    "usage": ("usage",),
    "list_grants": ("list_grants",),
    "list_holds": ("list_holds",),
    "set_plan": ("set_plan",),
    "get_plan": ("get_plan",),
    "set_alerts": ("set_alerts",),
    "set_limits": ("set_limits",),
    "get_limits": ("limits",),
    "get_settings": ("get_settings",),
    "set_auto_top_up": ("set_auto_top_up", "disable_auto_top_up"),
    "checkout": ("checkout",),
    "mint_token": ("create_token",),
    "prices": ("prices",),
    "catalog": ("catalog",),
    "list_events": ("list_events", "iter_events"),
    "retry_event": ("retry_event",),
    "search_accounts": ("search_accounts",),
    "list_payments": ("list_payments",),
    "credit_review": ("credit_review",),
    "dismiss_review": ("dismiss_review",),
    "audit_log": ("audit_log",),
}

# Request body fields named otherwise in the methods' parameters.
PARAMETER_OF_FIELD = {"idempotency_key": "key", "account_id": "account"}

# Request fields no method sends, and why.
FIELDS_LEFT_OUT: dict[tuple[str, str], str] = {
    ("set_alerts", "idempotency_key"): "a setting is idempotent by nature: the server ignores it",
    ("set_auto_top_up", "idempotency_key"): "a setting is idempotent by nature: the server "
                                            "ignores it",
    ("set_limits", "idempotency_key"): "a setting is idempotent by nature: the server ignores it",
}

LEFT_OUT: dict[str, str] = {
    "me": "a browser call (user token): the browser client, balance-client, has it",
    "my_transactions": "a browser call (user token): the browser client has it",
    "my_plan": "a browser call (user token): the browser client has it",
    "my_checkout": "a browser call (user token): the browser client has it",
    "stripe_webhook": "Stripe calls it, signed with Stripe's secret; not a backend call",
    "dodo_webhook": "Dodo Payments calls it, signed with Dodo's secret; not a backend call",
}
