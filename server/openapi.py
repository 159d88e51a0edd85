"""/openapi.json, generated from the msgspec request types so it cannot drift from them."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.messages import (
    AdjustRequest,
    BalanceFrame,
    CaptureRequest,
    ChargeRequest,
    CreditRequest,
    DebitRequest,
    HoldRequest,
    TokenRequest,
)

_REF = "#/components/schemas/{name}"

# (method, path, summary, request type or None, success status)
_OPERATIONS: list[tuple[str, str, str, type[msgspec.Struct] | None, int]] = [
    ("get", "/v1/accounts/{account_id}", "Read an account", None, 200),
    ("post", "/v1/accounts/{account_id}/debit", "Spend credits", DebitRequest, 200),
    ("post", "/v1/accounts/{account_id}/credit", "Add credits", CreditRequest, 200),
    ("post", "/v1/accounts/{account_id}/adjust", "Operator adjustment", AdjustRequest, 200),
    ("post", "/v1/accounts/{account_id}/charge", "Charge a priced operation", ChargeRequest, 200),
    ("post", "/v1/accounts/{account_id}/holds", "Reserve credits", HoldRequest, 201),
    ("get", "/v1/accounts/{account_id}/transactions", "History, newest first", None, 200),
    ("get", "/v1/accounts/{account_id}/usage", "Spending grouped", None, 200),
    ("post", "/v1/holds/{hold_id}/capture", "Capture a hold", CaptureRequest, 200),
    ("post", "/v1/holds/{hold_id}/release", "Release a hold", None, 200),
    ("post", "/v1/tokens", "Mint a browser token", TokenRequest, 200),
    ("get", "/v1/prices", "The price list", None, 200),
    ("get", "/v1/me", "The token's account (user token)", None, 200),
    ("get", "/v1/me/transactions", "The token's history (user token)", None, 200),
]

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "additionalProperties": True,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def build() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    types = [op[3] for op in _OPERATIONS if op[3] is not None] + [BalanceFrame]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    components["Error"] = _ERROR
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, status in _OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in ("account_id", "hold_id") if "{" + name + "}" in path
            ],
            "responses": {
                str(status): {"description": "success", "content": {"application/json": {}}},
                "default": {
                    "description": "error",
                    "content": {"application/json": {"schema": _ref("Error")}},
                },
            },
            "security": [{"bearer": []}],
        }
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(body.__name__)}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "balance-server", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_DOCUMENT = msgspec.json.encode(build())


async def endpoint(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")
