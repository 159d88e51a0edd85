"""client_py/examples/fastapi, driven end to end against a real balance-server: a
generation is charged once per job id, a failed one is not charged, and 402 says why."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from balance_client import AsyncBalance
from tests.conftest import RunningApp
from tests.local_server import local_server
from tests.sdk.test_webhooks import SECRET, signed

EXAMPLE = Path(__file__).resolve().parents[2] / "client_py" / "examples" / "fastapi" / "app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_fastapi_example_charges_once_per_job_and_never_for_failures(
        app: RunningApp, account: str, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example()
    async with app.client() as admin:
        await admin.post(f"/v1/accounts/{account}/credit",
                         json={"amount": 12, "kind": "grant", "idempotency_key": "g"})
    # Closed here: local_server cuts the example off without running its lifespan's end.
    async with (AsyncBalance(app.base_url, app.service_key) as balance,
                local_server(example.create_app(balance)) as url,
                httpx.AsyncClient(base_url=url, headers={"x-user": account}) as web):
        answers = [await web.post("/generations", json={"job_id": job, "prompt": prompt})
                   for job, prompt in [("1", "a cat"), ("1", "a cat"), ("2", "fail"),
                                       ("3", "a dog"), ("4", "a cow")]]
        token = await web.post("/balance-token")
        assert token.status_code == 200 and token.json()["token"].count(".") == 2
        monkeypatch.setenv("BALANCE_APP_WEBHOOK_SECRET", SECRET)
        body = b'{"type": "balance.low", "timestamp": "2026-12-07T10:00:00Z", "data": {}}'
        hook = await web.post("/webhooks/balance", content=body,
                              headers=signed(body, time.time()))
        forged = await web.post("/webhooks/balance", content=body.replace(b"low", b"lol"),
                                headers=signed(body, time.time()))
        assert (hook.status_code, hook.json(), forged.status_code) == (
            200, {"received": "balance.low"}, 401)

    (first, again, failed, second, poor) = [(a.status_code, a.json()) for a in answers]
    assert first == (200, {"url": first[1]["url"], "charged": 5, "balance": 7,
                           "replayed": False})
    assert again == (409, {"detail": {"error": "job_already_settled", "status": "captured"}})
    assert failed[0] == 502 and "nothing charged" in str(failed[1])
    assert second[0] == 200 and second[1]["balance"] == 2
    assert poor == (402, {"detail": {"error": "insufficient_credits", "required": 5,
                                     "available": 2}})
    async with app.client() as admin:
        history = (await admin.get(f"/v1/accounts/{account}/transactions")).json()
    assert [t["amount"] for t in history["transactions"]] == [-5, -5, 12]  # jobs 1 and 3
