"""The app's own JWTs: audience and issuer required, JWKS off the event loop, never a 5xx."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.config import ConfigError, Settings
from server.dev.servers import free_port
from tests.conftest import RunningApp, StartApp

AUDIENCE, ISSUER = "my-app", "https://auth.example/"
BASE = {"DATABASE_URL": "postgresql://x@y/z", "BALANCE_SERVICE_KEYS": "k" * 16,
        "BALANCE_TOKEN_SECRET": "t" * 32}


@pytest.mark.parametrize("setting", ["BALANCE_JWT_SECRET", "BALANCE_JWKS_FILE", "BALANCE_JWKS_URL"])
@pytest.mark.parametrize("missing", ["BALANCE_JWT_AUDIENCE", "BALANCE_JWT_ISSUER"])
def test_app_jwts_need_an_audience_and_an_issuer(setting: str, missing: str) -> None:
    env = {**BASE, setting: "s" * 32, "BALANCE_JWT_AUDIENCE": AUDIENCE,
           "BALANCE_JWT_ISSUER": ISSUER}
    Settings.from_env(env)
    with pytest.raises(ConfigError, match=missing):
        Settings.from_env({**env, missing: ""})


class Jwks:
    """An identity provider's JWKS endpoint that counts its requests and can hang."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"
        self.hits = 0
        self.hang = False

    async def endpoint(self, request: Request) -> Response:
        self.hits += 1
        if self.hang:
            await asyncio.sleep(30)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return Response(json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256"}]}),
                        media_type="application/json")

    def token(self, sub: str, *, kid: str | None = "k1", aud: str = AUDIENCE,
              iss: str = ISSUER, key: Any = None) -> str:
        headers = {"kid": kid} if kid is not None else {}
        claims = {"sub": sub, "aud": aud, "iss": iss, "exp": int(time.time()) + 600}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers=headers)


@pytest.fixture(scope="module")
async def jwks() -> AsyncIterator[tuple[Jwks, str]]:
    provider = Jwks()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/jwks.json", provider.endpoint)]), host="127.0.0.1",
        port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    yield provider, f"http://127.0.0.1:{port}/jwks.json"
    server.should_exit = True
    await task


@pytest.fixture(scope="module")
async def app_with_jwks(start_app: StartApp, jwks: tuple[Jwks, str]) -> RunningApp:
    return await start_app(jwks_url=jwks[1], jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                           jwt_secret="app-secret-" + "x" * 24)


async def me(app: RunningApp, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=app.base_url) as browser:
        return await browser.get("/v1/me", headers={"Authorization": f"Bearer {token}"})


async def test_a_token_of_another_project_is_refused(
    app_with_jwks: RunningApp, jwks: tuple[Jwks, str]
) -> None:
    provider = jwks[0]
    user = f"u-{uuid.uuid4().hex[:8]}"
    assert (await me(app_with_jwks, provider.token(user))).status_code == 200
    for token in (provider.token(user, aud="attacker-project"),
                  provider.token(user, iss="https://evil.example/"),
                  jwt.encode({"sub": user, "exp": int(time.time()) + 60},
                             provider.key, algorithm="RS256", headers={"kid": "k1"})):
        r = await me(app_with_jwks, token)
        assert r.status_code == 401, r.text
    secret = "app-secret-" + "x" * 24
    hs = {"sub": user, "exp": int(time.time()) + 60, "aud": AUDIENCE, "iss": ISSUER}
    assert (await me(app_with_jwks, jwt.encode(hs, secret, "HS256"))).status_code == 200
    no_aud = {k: v for k, v in hs.items() if k != "aud"}
    assert (await me(app_with_jwks, jwt.encode(no_aud, secret, "HS256"))).status_code == 401


async def test_unknown_kids_never_wait_on_the_network_and_refetch_at_most_once_a_minute(
    app_with_jwks: RunningApp, jwks: tuple[Jwks, str]
) -> None:
    provider = jwks[0]
    provider.hang = True  # the key server now takes 30 s to answer
    try:
        before = provider.hits
        started = time.monotonic()
        for _ in range(20):
            r = await me(app_with_jwks, provider.token("victim", kid=uuid.uuid4().hex))
            assert r.status_code == 401
        assert time.monotonic() - started < 3.0  # no request waited on the key server
        await asyncio.sleep(0.2)
        assert provider.hits - before <= 1
        # Known keys keep working meanwhile.
        assert (await me(app_with_jwks, provider.token("victim"))).status_code == 200
    finally:
        provider.hang = False


async def test_odd_tokens_are_401_never_500(
    app_with_jwks: RunningApp, jwks: tuple[Jwks, str]
) -> None:
    provider = jwks[0]
    ec_key = ec.generate_private_key(ec.SECP256R1())
    claims = {"sub": "x", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}
    odd = [
        provider.token("x", kid=None),  # no kid: the one key there is signs it (accepted)
        jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "k1"}),  # wrong key type
        jwt.encode(claims, "s" * 64, algorithm="HS512"),
        "e30.e30.e30",
        "not-a-token",
    ]
    codes = [(await me(app_with_jwks, token)).status_code for token in odd]
    assert codes == [200, 401, 401, 401, 401]
