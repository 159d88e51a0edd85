"""Service keys (the app's backend) and user tokens (the browser)."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

import jwt

from server import errors
from server.config import Scope, ServiceKey, Settings
from server.jwks import KeySet
from server.messages import ACCOUNT_ID_RULE, is_account_id

TOKEN_ISSUER = "balance-server"
TOKEN_AUDIENCE = "balance-server:user"


def check_service_key(header: str | None, keys: tuple[ServiceKey, ...]) -> ServiceKey:
    """The configured key that `Bearer <key>` is, compared in constant time, or 401."""
    if not header or not header.startswith("Bearer "):
        raise errors.unauthorized("missing service key (Authorization: Bearer <key>)")
    given = header[7:].strip().encode()
    found: ServiceKey | None = None
    for key in keys:  # no early exit: the time taken does not say which key nearly matched
        if hmac.compare_digest(given, key.secret.encode()):
            found = key
    if found is None:
        raise errors.unauthorized("invalid service key")
    return found


def check_scope(key: ServiceKey, needed: Scope) -> None:
    """403 unless `key` may do what `needed` allows."""
    if not key.allows(needed):
        raise errors.forbidden(needed, key.name, key.scope)


def check_secret(header: str | None, secret: str) -> None:
    """Accept `Bearer <secret>` (the metrics token), compared in constant time."""
    given = bearer(header).encode()
    if not hmac.compare_digest(given, secret.encode()):
        raise errors.unauthorized("invalid token")


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or 401."""
    if not header or not header.startswith("Bearer "):
        raise errors.unauthorized("missing token (Authorization: Bearer <token>)")
    return header[7:].strip()


def mint_token(secret: str, account_id: str, ttl_seconds: int,
               read_only: bool = False) -> tuple[str, int]:
    """A browser token for one account; returns (token, expires_at unix seconds).
    `read_only`: it may watch and read the account, not buy for it (the console's)."""
    now = int(time.time())
    exp = now + ttl_seconds
    claims: dict[str, Any] = {"sub": account_id, "iat": now, "exp": exp, "iss": TOKEN_ISSUER,
                              "aud": TOKEN_AUDIENCE}
    if read_only:
        claims["ro"] = True
    return jwt.encode(claims, secret, algorithm="HS256"), exp


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified user token speaks for, and until when."""

    account_id: str
    expires_at: float  # unix seconds
    read_only: bool = False  # minted for the console: reads and watches, never buys


class TokenVerifier:
    """Mints our HS256 user tokens and verifies them, or the app's own JWTs when configured.

    An app JWT must carry the configured audience and issuer (config refuses to start
    without them): a JWKS like Firebase's or Auth0's signs tokens of other projects too.
    """

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.token_secret
        self._app_secret = settings.jwt_secret
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._claim = settings.jwt_account_claim
        self._keys: KeySet | None = None
        if settings.jwks_file or settings.jwks_url:
            self._keys = KeySet(file=settings.jwks_file, url=settings.jwks_url)

    async def start(self) -> None:
        if self._keys is not None:
            await self._keys.start()

    async def stop(self) -> None:
        if self._keys is not None:
            await self._keys.stop()

    def mint(self, account_id: str, ttl_seconds: int,
             read_only: bool = False) -> tuple[str, int]:
        """A browser token for one account: (token, expires_at unix seconds)."""
        return mint_token(self._secret, account_id, ttl_seconds, read_only)

    def verify(self, token: str) -> Identity:
        """The token's account and expiry; 401 `unauthorized` for anything else, whatever
        the token holds (never a 5xx)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise errors.unauthorized("malformed token") from None
        try:
            claims = self._decode(token, header)
        except jwt.PyJWTError as exc:
            raise errors.unauthorized(f"invalid token: {exc}") from None
        except (TypeError, ValueError, KeyError) as exc:  # a key of the wrong type, and such
            raise errors.unauthorized(f"invalid token: {type(exc).__name__}") from None
        ours = claims.get("iss") == TOKEN_ISSUER
        account = claims.get("sub") if ours else None
        if account is None:
            account = claims.get(self._claim)
        if not is_account_id(account):
            raise errors.unauthorized(
                f"token's {self._claim!r} claim is not an account id ({ACCOUNT_ID_RULE})")
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise errors.unauthorized("token has no expiry")
        return Identity(account, float(exp), read_only=ours and claims.get("ro") is True)

    def _decode(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        alg = header.get("alg")
        if alg == "HS256":
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, self._secret, algorithms=["HS256"], audience=TOKEN_AUDIENCE,
                    issuer=TOKEN_ISSUER, options={"require": ["exp"]},
                )
                return claims
            except jwt.PyJWTError:
                if not self._app_secret:
                    raise
            return self._decode_app(token, self._app_secret, ["HS256"])
        if alg in ("RS256", "ES256") and self._keys is not None:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise jwt.InvalidKeyError("kid is not a string")
            return self._decode_app(token, self._keys.key(kid), [alg])
        raise jwt.InvalidAlgorithmError(f"algorithm {alg!r} is not accepted")

    def _decode_app(self, token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=algorithms, audience=self._audience, issuer=self._issuer,
            options={"require": ["exp", "aud", "iss"]},
        )
        return claims
