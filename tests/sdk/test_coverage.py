"""The SDK against the contract: every operation of /openapi.json has a method (or is left
out on purpose, with why), every request field is a parameter of it, and the sync client
is the async one, regenerated."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import httpx

from balance_client import AsyncBalance, Balance
from balance_client.operations import FIELDS_LEFT_OUT, LEFT_OUT, OPERATIONS, PARAMETER_OF_FIELD

CLIENT_PY = Path(__file__).resolve().parents[2] / "client_py"


async def test_every_operation_and_field_of_the_openapi_document_is_covered(
        client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    missing: list[str] = []
    for route, methods in document["paths"].items():
        for verb, operation in methods.items():
            op_id = operation["operationId"]
            if op_id in LEFT_OUT:
                continue
            if op_id not in OPERATIONS:
                missing.append(f"{verb.upper()} {route} ({op_id}): no method")
                continue
            fields: set[str] = {p["name"] for p in operation.get("parameters", [])
                                if p["in"] == "query"}
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            for ref in [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]:
                if ref:
                    fields |= set(schemas[ref.rsplit("/", 1)[1]].get("properties", {}))
            accepted: set[str] = set()
            for name in OPERATIONS[op_id]:
                accepted |= set(inspect.signature(getattr(AsyncBalance, name)).parameters)
            for field in sorted(fields - {f for o, f in FIELDS_LEFT_OUT if o == op_id}):
                if PARAMETER_OF_FIELD.get(field, field) not in accepted and not (
                        field in ("limit", "before") and "page_size" in accepted):
                    missing.append(f"{op_id}: no parameter for {field!r}")
    assert not missing, "the SDK lacks:\n" + "\n".join(missing)
    covered = {op["operationId"] for methods in document["paths"].values()
               for op in methods.values()}
    assert set(OPERATIONS) | set(LEFT_OUT) == covered, "stale names in operations.py"


def test_the_sync_client_has_every_method_of_the_async_one() -> None:
    for names in OPERATIONS.values():
        for name in names:
            assert name in vars(Balance) and name in vars(AsyncBalance), name
            sync = inspect.signature(getattr(Balance, name))
            asynchronous = inspect.signature(getattr(AsyncBalance, name))
            assert sync.parameters.keys() == asynchronous.parameters.keys(), name


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    check = subprocess.run([sys.executable, str(CLIENT_PY / "scripts" / "make_sync.py"),
                            "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_sdk_does_not_import_the_server() -> None:
    code = ("import sys, balance_client, balance_client.webhooks; "
            "print(sorted(m for m in sys.modules if m == 'server' or m.startswith('server.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=CLIENT_PY, check=True)
    assert out.stdout.strip() == "[]"
