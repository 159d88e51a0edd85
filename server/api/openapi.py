"""/openapi.json, generated from the route table, the msgspec request types, the shapes of
the answers (api/shapes.py: every success body, and the error body of every code each status
may carry) and this app's catalog and checkout settings.

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
from server.api import shapes
from server.api.backend import MAX_USAGE_RANGE
from server.api.http import AUDIT_REASON_MOST, CURSOR, PAGE_SIZE, resources
from server.api.operator import CURSOR_MOST, PREFIX_MOST
from server.api.routes import OPERATIONS, Operation
from server.catalog import MAX_QUANTITY, Catalog
from server.directory import PAYMENT_STATUSES
from server.errors import HTTP_STATUS
from server.history import KINDS, USAGE_GROUPS
from server.messages import ACCOUNT_ID_PATTERN, JSON_VALUE_SCHEMA, BalanceFrame
from server.payments.checkout import Checkout
from server.resources import Resources

_REF = "#/components/schemas/{name}"
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "account_id": {"type": "string", "pattern": ACCOUNT_ID_PATTERN},
    "hold_id": {"type": "string", "format": "uuid"},
    "event_id": {"type": "integer", "minimum": CURSOR[0], "maximum": CURSOR[1]},
    "review_id": {"type": "integer", "minimum": CURSOR[0], "maximum": CURSOR[1]},
}
_DATE_TIME = {"type": "string", "format": "date-time"}
_QUERY_PARAMS: dict[str, tuple[dict[str, Any], str]] = {
    "limit": ({"type": "integer", "minimum": PAGE_SIZE[0], "maximum": PAGE_SIZE[1],
               "default": 50}, "page size"),
    "before": ({"type": "integer", "minimum": CURSOR[0], "maximum": CURSOR[1]},
               "the previous page's `next`"),
    "kind": ({"type": "string", "enum": list(KINDS)}, "only transactions of this kind"),
    "status": ({"type": "string", "enum": list(outbox.STATUSES)}, "only events in this state"),
    "group_by": ({"type": "string", "enum": list(USAGE_GROUPS), "default": "reason"},
                 "group spending by reason, by UTC day, or by both (day,reason)"),
    "since": (_DATE_TIME, f"from (inclusive); at most {MAX_USAGE_RANGE.days} days before "
              f"until; default: until - {MAX_USAGE_RANGE.days} days"),
    "until": (_DATE_TIME, "to (exclusive); default: now"),
    "account_id": ({"type": "string", "pattern": ACCOUNT_ID_PATTERN}, "only this account's"),
    "prefix": ({"type": "string", "maxLength": PREFIX_MOST, "pattern": "^[ -~]*$"},
               "accounts whose id starts with this; default: every account"),
    "cursor": ({"type": "string", "maxLength": CURSOR_MOST, "pattern": "^[ -~]*$"},
               "the previous page's `next`"),
    "payment_status": ({"type": "string", "enum": list(PAYMENT_STATUSES)},
                       "credited, reversed (refunds took some back), disputed (a dispute not "
                       "won), needs_review (paid, not credited, open), resolved (reviewed)"),
}
# On an operator action (routes.Operation.audited): why, kept in its audit log entry.
_AUDIT_REASON = {
    "name": "X-Audit-Reason", "in": "header", "required": False,
    # Each character is at most 4 bytes of UTF-8, each byte 3 characters escaped.
    "schema": {"type": "string", "minLength": 1, "maxLength": 12 * AUDIT_REASON_MOST},
    "description": f"why (1-{AUDIT_REASON_MOST} printable characters, percent-encoded UTF-8): "
                   "the audit log entry's detail.reason, unless the body gives a reason"}
# Query parameters whose name means another thing on another path: (name, required).
_QUERY_NAMES = {"payment_status": ("status", True)}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "service": [{"serviceKey": []}],
    "user": [{"userToken": []}],
    "service_or_user": [{"serviceKey": []}, {"userToken": []}],
    "signature": [],  # the provider's signature headers, checked on the raw body
}


def _security(op: Operation) -> list[dict[str, list[str]]]:
    """How the operation authenticates; a service key's with the scope it needs, as the
    role OpenAPI 3.1 lets a requirement name (the key's scope must be it or wider)."""
    return [{name: [op.scope] if name == "serviceKey" else roles
             for name, roles in requirement.items()} for requirement in _SECURITY[op.auth]]


# What every operation may answer, beyond its own refusals (routes.Operation.refusals).
_ALWAYS = ("unauthorized", "rate_limited", "internal_error", "unavailable")
_BODY = ("invalid_json", "payload_too_large", "invalid_request")  # an operation with a body
# On every answer: the caller's X-Request-Id (printable, at most 128 characters) or ours.
_REQUEST_ID = {"X-Request-Id": {"description": "this request's id, as its log lines carry it",
                                "schema": {"type": "string", "maxLength": 128}}}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait, whole", "required": True,
                                "schema": {"type": "integer", "minimum": 0}}}
# On the answers of operations that may replay an earlier answer (_replays).
_REPLAYED = {"Idempotent-Replayed": {
    "description": "`true`: the answer of an earlier request with this idempotency_key",
    "schema": {"type": "string", "enum": ["true"]}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _refusals(op: Operation) -> dict[int, list[str]]:
    """The error codes the operation may answer, by status."""
    codes = {*_ALWAYS, *op.refusals}
    if op.auth == "service" and op.scope != "read":  # a key of a narrower scope: 403
        codes.add("forbidden")
    if op.body is not None:
        codes.update(_BODY)
    if op.query or op.audited or "{account_id}" in op.path:  # a bad id of another kind: 404
        codes.add("invalid_request")
    by_status: dict[int, list[str]] = {}
    for code, status in HTTP_STATUS.items():
        if code in codes:
            by_status.setdefault(status, []).append(code)
    return dict(sorted(by_status.items()))


def _error_response(codes: list[str]) -> dict[str, Any]:
    """A status's answer: the error body of one of `codes`, told apart by `error`."""
    description = " ".join(f"`{code}`: {_doc(shapes.ERRORS[code])}" for code in codes)
    refs = {code: _REF.format(name=shapes.ERRORS[code].__name__) for code in codes}
    schema: dict[str, Any] = {"$ref": refs[codes[0]]} if len(codes) == 1 else {
        "oneOf": [{"$ref": ref} for ref in refs.values()],
        "discriminator": {"propertyName": "error", "mapping": refs}}
    return {"description": description, "content": {"application/json": {"schema": schema}},
            "headers": _REQUEST_ID | (_RETRY_AFTER if "rate_limited" in codes else {})}


def _doc(kind: type) -> str:
    """The first paragraph of a shape's docstring, on one line."""
    return " ".join((kind.__doc__ or "").split("\n\n")[0].split())


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


def _answers(schemas: dict[Any, dict[str, Any]], components: dict[str, Any]) -> None:
    """Name the answers msgspec cannot name (shapes.Component), and require every field of
    the catalog's Structs, which GET /v1/catalog writes whole."""
    for op in OPERATIONS:
        if isinstance(op.answer, shapes.Component):
            found = [schemas[kind] for kind in op.answer.types]
            schema = found[0] if len(found) == 1 else {"oneOf": found}
            components[op.answer.name] = {"description": op.answer.description, **schema}
    for kind in shapes.CATALOG:
        component = components[kind.__name__]
        component["required"] = list(component["properties"])


def _answer_types() -> list[Any]:
    found: list[Any] = []
    for op in OPERATIONS:
        found.extend(op.answer.types if isinstance(op.answer, shapes.Component)
                     else [op.answer])
    return found


def _replays(op: Operation) -> bool:
    """Whether an answer may be a replay: the body requires an idempotency_key, or the
    operation resolves a hold or a review (whose id is the key of its resolution)."""
    if op.path.startswith(("/v1/holds/", "/v1/payments/reviews/")):  # the id is the key
        return True
    return op.body is not None and any(
        f.name == "idempotency_key" and f.required for f in msgspec.structs.fields(op.body))


def build(catalog: Catalog, checkout: Checkout) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app with this catalog and checkout."""
    types = [op.body for op in OPERATIONS if op.body is not None] + [BalanceFrame]
    types += _answer_types() + list(shapes.ERRORS.values())
    found, components = msgspec.json.schema_components(types, ref_template=_REF)
    schemas = dict(zip(types, found, strict=True))
    _answers(schemas, components)
    components["Error"] = {
        "description": "Every error: `error` is the code, `message` for a human; the details "
                       "depend on the code",
        "oneOf": [_ref(kind.__name__) for kind in shapes.ERRORS.values()],
        "discriminator": {"propertyName": "error", "mapping": {
            code: _REF.format(name=kind.__name__) for code, kind in shapes.ERRORS.items()}}}
    components["JsonValue"] = JSON_VALUE_SCHEMA
    _merge(components["ChargeRequest"], _charge_rules(catalog))
    _merge(components["CheckRequest"], _check_rules(catalog))
    _merge(components["HoldRequest"], _hold_rules(catalog))
    components["PlanRequest"]["properties"]["plan"] = {
        "anyOf": [{"enum": sorted(catalog.plans)}, {"type": "null"}] if catalog.plans
        else [{"type": "null"}], "description": "a catalog plan, or null to remove the plan"}
    _merge(components["CheckoutRequest"], checkout.request_schema())
    # Replaced, not merged: a request generator then meets the plans on sale (or none) at once.
    sold = checkout.plans_sold()
    components["CheckoutRequest"]["properties"]["plan"] = {
        "anyOf": [{"enum": sold}, {"type": "null"}] if sold else [{"type": "null"}],
        "description": "a catalog plan sold at the provider: the checkout starts its "
                       "subscription"}
    # Auto top-up sells a priced package, with Stripe.
    priced = sorted(name for name, p in catalog.packages.items() if p.price)
    top_up = components["AutoTopUpRequest"]["properties"]
    sellable: dict[str, Any] = {"enum": priced} if priced else {"not": {}}
    top_up["package"] = sellable if checkout.stripe_client else {"not": {}}
    # A monthly limit below one package could never allow a top-up. The target's rule
    # (greater than threshold) compares two fields, which JSON Schema cannot: said here.
    limits = [{"properties": {"package": {"const": name}, "monthly_limit": {
        "anyOf": [{"type": "null"}, {"minimum": p.price[p.default_currency()]}]}}}
        for name, p in catalog.packages.items() if p.price]
    if limits:
        components["AutoTopUpRequest"]["anyOf"] = limits
    top_up["target"]["description"] = (
        "buy as many packages as bring available up to this (at least one, at most 1000); "
        "must be greater than threshold")
    top_up["monthly_limit"]["description"] = (
        "the most this UTC month's top-ups may cost, in minor units of the package's "
        "currency (its USD price if it has one); at least one package's price")
    components["CreditRequest"]["properties"]["expires_at"]["description"] = (
        "when the grant's unspent credits expire; must be in the future")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        answer = (_ref(op.answer.name) if isinstance(op.answer, shapes.Component)
                  else schemas[op.answer])
        responses: dict[str, Any] = {str(op.status): {
            "description": (_doc(op.answer) if isinstance(op.answer, type)
                            else op.answer.description) or "success",
            "content": {"application/json": {"schema": answer}},
            "headers": _REQUEST_ID | (_REPLAYED if _replays(op) else {})}}
        for status, codes in _refusals(op).items():
            responses[str(status)] = _error_response(codes)
        doc: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]}
                for name in re.findall(r"\{(\w+)\}", op.path)
            ] + ([_AUDIT_REASON] if op.audited else []) + [
                {"name": _QUERY_NAMES.get(name, (name, False))[0], "in": "query",
                 "required": _QUERY_NAMES.get(name, (name, False))[1],
                 "schema": _QUERY_PARAMS[name][0], "description": _QUERY_PARAMS[name][1]}
                for name in op.query
            ],
            "responses": responses,
            "security": _security(op),
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
                "serviceKey": {"type": "http", "scheme": "bearer", "description": (
                    "A service key (BALANCE_SERVICE_KEYS). Its scope is `read` (GET routes), "
                    "`spend` (also debit, charge, check, holds, tokens, checkout, opening an "
                    "account) or `admin` (everything); each operation names the scope it "
                    "needs as its security requirement's role, and a narrower key gets 403 "
                    "`forbidden`.")},
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
