"""/openapi.json, generated from the route table and the msgspec request types."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.api.routes import OPERATIONS
from server.messages import ACCOUNT_ID_PATTERN, BalanceFrame

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
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "service": [{"serviceKey": []}],
    "user": [{"userToken": []}],
    "service_or_user": [{"serviceKey": []}, {"userToken": []}],
    "signature": [],  # the provider's signature headers, checked on the raw body
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def build() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    types = [op.body for op in OPERATIONS if op.body is not None] + [BalanceFrame]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    components["Error"] = _ERROR
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        doc: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]}
                for name in re.findall(r"\{(\w+)\}", op.path)
            ],
            "responses": {
                str(op.status): {"description": "success", "content": {"application/json": {}}},
                "default": {
                    "description": "error",
                    "content": {"application/json": {"schema": _ref("Error")}},
                },
            },
            "security": _SECURITY[op.auth],
        }
        if op.body is not None:
            doc["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.body.__name__)}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {"title": "balance-server", "version": "1.1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer"},
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }


_DOCUMENT = msgspec.json.encode(build())


async def endpoint(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")
