"""/openapi.json, generated from the route table, the msgspec request types and this app's
catalog and checkout settings.

Rules that depend on configuration (which operations have a price, which packages and
providers a checkout may name, which return URLs are allowed) are part of the document, so
a request the document calls valid is one the server accepts. What JSON Schema cannot say
is written in the descriptions: a credit's `expires_at` must be in the future and a usage
range spans at most 366 days.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server import outbox
from server.api.backend import MAX_USAGE_RANGE
from server.api.http import CURSOR, PAGE_SIZE, resources
from server.api.routes import OPERATIONS, Operation
from server.catalog import MAX_QUANTITY, Catalog
from server.history import KINDS
from server.messages import ACCOUNT_ID_PATTERN, JSON_VALUE_SCHEMA, BalanceFrame
from server.payments.checkout import Checkout
from server.resources import Resources

_REF = "#/components/schemas/{name}"
_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "additionalProperties": True,
}
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "account_id": {"type": "string", "pattern": ACCOUNT_ID_PATTERN},
    "hold_id": {"type": "string", "format": "uuid"},
    "event_id": {"type": "integer", "minimum": CURSOR[0], "maximum": CURSOR[1]},
}
_DATE_TIME = {"type": "string", "format": "date-time"}
_QUERY_PARAMS: dict[str, tuple[dict[str, Any], str]] = {
    "limit": ({"type": "integer", "minimum": PAGE_SIZE[0], "maximum": PAGE_SIZE[1],
               "default": 50}, "page size"),
    "before": ({"type": "integer", "minimum": CURSOR[0], "maximum": CURSOR[1]},
               "the previous page's next_cursor"),
    "kind": ({"type": "string", "enum": list(KINDS)}, "only transactions of this kind"),
    "status": ({"type": "string", "enum": list(outbox.STATUSES)}, "only events in this state"),
    "group_by": ({"type": "string", "enum": ["reason", "day"], "default": "reason"},
                 "group spending by reason or by UTC day"),
    "since": (_DATE_TIME, f"from (inclusive); at most {MAX_USAGE_RANGE.days} days before "
              f"until; default: until - {MAX_USAGE_RANGE.days} days"),
    "until": (_DATE_TIME, "to (exclusive); default: now"),
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "service": [{"serviceKey": []}],
    "user": [{"userToken": []}],
    "service_or_user": [{"serviceKey": []}, {"userToken": []}],
    "signature": [],  # the provider's signature headers, checked on the raw body
}
_STATUS = {
    400: "the body is not JSON",
    401: "missing or invalid credentials (or webhook signature)",
    402: "insufficient_credits: `required` and `available` say by how much",
    404: "no such hold or event",
    409: "idempotency_conflict (the key was used with another body), or hold_not_active",
    413: "the body is over 64 KiB",
    422: "invalid_request: `detail` names the field and the rule",
    429: "rate_limited: see Retry-After",
    500: "internal_error: a failure of ours; `request_id` names its log line",
    502: "the payment provider did not answer; nothing was created here",
    503: "unavailable (the database is unreachable), or outcome_unknown",
}


# On every answer: the caller's X-Request-Id (printable, at most 128 characters) or ours.
_REQUEST_ID = {"X-Request-Id": {"description": "this request's id, as its log lines carry it",
                                "schema": {"type": "string", "maxLength": 128}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _statuses(op: Operation) -> list[int]:
    found = {401, 429, 500, 503, *op.refusals}
    if op.body is not None:
        found |= {400, 413, 422}
    if op.query or "{" in op.path:
        found.add(422)
    return sorted(found)


def _charge_rules(catalog: Catalog) -> dict[str, Any]:
    """Only priced operations; a quantity whose cost at the highest price (any plan) stays
    within 10^12 credits."""
    names = sorted(catalog.prices)
    if not names:
        return {"properties": {"operation": {"not": {}}}}
    capped = [{"properties": {"operation": {"const": name},
                              "quantity": {"maximum": catalog.max_quantity(name)}}}
              for name in names if catalog.max_quantity(name) < MAX_QUANTITY]
    rules: dict[str, Any] = {"properties": {"operation": {"enum": names}}}
    if capped:
        free = [name for name in names if catalog.max_quantity(name) == MAX_QUANTITY]
        rules["anyOf"] = capped + ([{"properties": {"operation": {"enum": free}}}] if free else [])
    return rules


def _check_rules(catalog: Catalog) -> dict[str, Any]:
    """A charge's rules with its operation, or an amount: one of the two."""
    charge = _charge_rules(catalog)
    operation = {"required": ["operation"], "properties": {
        "amount": {"type": "null"}, **charge["properties"]}}
    if "anyOf" in charge:
        operation["anyOf"] = charge["anyOf"]
    amount = {"required": ["amount"], "properties": {
        "operation": {"type": "null"}, "amount": {"type": "integer"}}}
    return {"anyOf": [operation, amount]}


def _hold_rules(catalog: Catalog) -> dict[str, Any]:
    """As a check's: an operation (its reason defaults to the operation's name) or an
    amount, which names its reason."""
    rules = _check_rules(catalog)
    amount = rules["anyOf"][1]
    amount["required"].append("reason")
    amount["properties"]["reason"] = {"type": "string"}
    return rules


def _merge(schema: dict[str, Any], rules: dict[str, Any]) -> None:
    for key, value in rules.items():
        if key == "properties":
            for name, extra in value.items():
                schema["properties"][name] = {"allOf": [schema["properties"][name], extra]}
        else:
            schema[key] = value


def build(catalog: Catalog, checkout: Checkout) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app with this catalog and checkout."""
    types = [op.body for op in OPERATIONS if op.body is not None] + [BalanceFrame]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    components["Error"] = _ERROR
    components["JsonValue"] = JSON_VALUE_SCHEMA
    _merge(components["ChargeRequest"], _charge_rules(catalog))
    _merge(components["CheckRequest"], _check_rules(catalog))
    _merge(components["HoldRequest"], _hold_rules(catalog))
    components["PlanRequest"]["properties"]["plan"] = {
        "anyOf": [{"enum": sorted(catalog.plans)}, {"type": "null"}] if catalog.plans
        else [{"type": "null"}], "description": "a catalog plan, or null to remove the plan"}
    _merge(components["CheckoutRequest"], checkout.request_schema())
    # Auto top-up sells a priced package, with Stripe.
    priced = sorted(name for name, p in catalog.packages.items() if p.price)
    top_up = components["AutoTopUpRequest"]["properties"]
    sellable: dict[str, Any] = {"enum": priced} if priced else {"not": {}}
    top_up["package"] = sellable if checkout.stripe_client else {"not": {}}
    components["CreditRequest"]["properties"]["expires_at"]["description"] = (
        "when the grant's unspent credits expire; must be in the future")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            str(op.status): {"description": "success", "content": {"application/json": {}},
                             "headers": _REQUEST_ID}}
        for status in _statuses(op):
            responses[str(status)] = {
                "description": _STATUS[status],
                "content": {"application/json": {"schema": _ref("Error")}},
                "headers": _REQUEST_ID,
            }
        doc: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]}
                for name in re.findall(r"\{(\w+)\}", op.path)
            ] + [
                {"name": name, "in": "query", "required": False,
                 "schema": _QUERY_PARAMS[name][0], "description": _QUERY_PARAMS[name][1]}
                for name in op.query
            ],
            "responses": responses,
            "security": _SECURITY[op.auth],
        }
        if op.body is not None:
            schema: dict[str, Any] = _ref(op.body.__name__)
            if op.body_nullable:
                schema = {"anyOf": [schema, {"type": "null"}]}
            doc["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": schema}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {"title": "balance-server", "version": "1.2"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer"},
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }


class Document:
    """GET /openapi.json, built and encoded once: it depends only on the catalog and the
    checkout settings, fixed for the process's life, and anyone may ask for it."""

    def __init__(self) -> None:
        self._of: Resources | None = None  # the resources it was built from
        self._body = b""

    async def endpoint(self, request: Request) -> Response:
        res = resources(request)
        if self._of is not res:
            self._body = msgspec.json.encode(build(res.catalog, res.checkout))
            self._of = res
        return Response(self._body, media_type="application/json")
