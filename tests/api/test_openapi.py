"""/openapi.json is exact: schemathesis, every check, against a real server whose catalog has
packages, pay-as-you-go, a price high enough to cap quantity, and both providers (through the
checkout stand-in). `make fuzz` runs the same test with many more examples."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from server.auth import mint_token
from tests.conftest import StartApp, key
from tests.payments.standin import StandIn

HERE = Path(__file__).parent
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CATALOG = {
    "prices": {"generate_image": 5, "render_film": 250_000},
    "packages": {
        "starter": {"credits": 100, "price": {"usd": 500, "eur": 450},
                    "dodo_product": "pdt_starter"},
        "plain": {"credits": 40, "price": {"usd": 300}},
    },
    "pay_as_you_go": {"credits_per_unit": {"usd": 20, "jpy": 3}, "min_amount": {"usd": 100}},
    "plans": {
        "pro": {"allowance": 1000, "rollover": 500, "prices": {"render_film": 400_000},
                "limits": {"generate_image": 50}},
        "free": {"allowance": 50, "period": "day"},
    },
}


async def test_schemathesis_finds_nothing(
    start_app: StartApp, stand_in: StandIn, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    app = await start_app(
        catalog_file=str(catalog), stripe_api_key="sk_test_standin",
        stripe_api_base=stand_in.url, dodo_api_key="dodo_test_standin",
        dodo_api_base=stand_in.url, checkout_return_urls=("https://app.example/",),
        rate_limits="me=100000/minute;checkout=100000/minute")
    account = f"fuzz-{key()[:8]}"
    async with app.client() as c:
        r = await c.post(f"/v1/accounts/{account}/credit",
                         json={"amount": 10**9, "kind": "grant", "idempotency_key": key()})
        assert r.status_code == 200, r.text
        r = await c.post(f"/v1/accounts/{account}/holds", json={
            "amount": 10, "reason": "fuzz", "idempotency_key": key(), "ttl_seconds": 3600})
        assert r.status_code == 201, r.text
        hold_id = r.json()["hold"]["id"]
    env = {
        **os.environ,
        "FUZZ_SERVICE_KEY": app.service_key,
        "FUZZ_USER_TOKEN": mint_token(app.settings.token_secret, account, 3600)[0],
        "FUZZ_HOLD_ID": hold_id,
        "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
        "PYTHONPATH": str(HERE.parent.parent),
    }
    # The server runs in this event loop: the fuzzer must be awaited, not waited for.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{app.base_url}/openapi.json", "--checks", "all",
        "--max-examples", str(EXAMPLES), "--seed", os.environ.get("FUZZ_SEED", "20261121"),
        "--no-color", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    await app.stop()  # its jobs (auto top-up of what the fuzzer configured) stop with it
    text = out.decode(errors="replace")
    summary = [line for line in text.splitlines() if " in " in line and "=====" in line]
    print(text[-3000:])
    assert proc.returncode == 0, text[-20000:]
    assert "Tested: 27" in text  # every operation but the two signed webhooks
    assert summary and "failure" not in summary[-1], summary


@pytest.mark.parametrize("body", [
    {"amount": 7.0, "reason": "float", "idempotency_key": "k"},
    {"amount": 7, "reason": "float", "idempotency_key": "k", "metadata": {"n": 1.0}},
])
def test_an_integral_float_is_an_int(body: dict[str, object]) -> None:
    from server.messages import DebitRequest, decode_body

    value = decode_body(DebitRequest, json.dumps(body).encode())
    assert value.amount == 7 and type(value.amount) is int
    if value.metadata is not None:
        assert value.metadata == {"n": 1.0}  # opaque metadata is kept as sent
