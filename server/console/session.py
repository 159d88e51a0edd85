"""The console's sign-in: an operator key exchanged for a short-lived session cookie.

The cookie holds a JWT signed with the server's token secret (its own audience, so neither a
user token nor a session can pass for the other) naming the service key it was opened with,
that key's scope, a fingerprint of the key (an HMAC of it under the token secret) and a
CSRF token. The key itself is never in it: a session is worth what its key is worth now, so
a key removed from BALANCE_SERVICE_KEYS, given another scope, or rotated (another secret
under the same name, as a bare key's position name `key1` can be) ends every session opened
with it at the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt

from server import errors
from server.auth import TOKEN_ISSUER
from server.config import SCOPES, Scope, ServiceKey
from server.messages import encoder

COOKIE = "balance_console"
AUDIENCE = "balance-server:console"
TTL_SECONDS = 30 * 60
CSRF_HEADER = "x-csrf-token"
# Methods that change nothing: everything else must carry the session's CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Session:
    """Who is signed in (the key's name and scope), their CSRF token, and until when."""

    name: str
    scope: Scope
    csrf: str
    expires_at: int  # unix seconds
    key_print: str  # which secret the key had (fingerprint), never shown to the page

    def json(self) -> bytes:
        return encoder.encode({"name": self.name, "scope": self.scope, "csrf": self.csrf,
                               "expires_at": self.expires_at})


def mint(secret: str, key: ServiceKey, now: float | None = None) -> tuple[str, Session]:
    """A session for `key`: (the cookie's JWT, what the page may know of it)."""
    issued = int(time.time() if now is None else now)
    session = Session(key.name, key.scope, secrets.token_urlsafe(32), issued + TTL_SECONDS,
                      fingerprint(secret, key))
    claims = {"sub": key.name, "scope": key.scope, "csrf": session.csrf, "iat": issued,
              "exp": session.expires_at, "kp": session.key_print, "iss": TOKEN_ISSUER,
              "aud": AUDIENCE}
    return jwt.encode(claims, secret, algorithm="HS256"), session


def verify(secret: str, token: str) -> Session:
    """The session a cookie holds, or 401 (expired, forged, or not a console session)."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=AUDIENCE,
                            issuer=TOKEN_ISSUER,
                            options={"require": ["exp", "sub", "scope", "csrf", "kp"]})
    except jwt.ExpiredSignatureError:
        raise errors.unauthorized("console session expired; sign in again") from None
    except jwt.PyJWTError:
        raise errors.unauthorized("invalid console session") from None
    name, scope, csrf, exp = claims["sub"], claims["scope"], claims["csrf"], claims["exp"]
    key_print = claims["kp"]
    if not (isinstance(name, str) and scope in SCOPES and isinstance(csrf, str)
            and isinstance(exp, int) and isinstance(key_print, str)):
        raise errors.unauthorized("invalid console session")
    return Session(name, scope, csrf, exp, key_print)


def fingerprint(secret: str, key: ServiceKey) -> str:
    """Which secret `key` has, without saying it: an HMAC under the token secret."""
    return hmac.new(secret.encode(), key.secret.encode(), hashlib.sha256).hexdigest()[:32]


def current_key(session: Session, keys: tuple[ServiceKey, ...], secret: str) -> ServiceKey:
    """The configured key the session was opened with, as long as it is still there with
    the same scope and the same secret; else 401."""
    for key in keys:
        if key.name == session.name and key.scope == session.scope and hmac.compare_digest(
                fingerprint(secret, key), session.key_print):
            return key
    raise errors.unauthorized("the console session's key is gone or changed; sign in again")


def check_csrf(session: Session, method: str, header: str | None) -> None:
    """401 for a mutation whose X-CSRF-Token is not the session's (compared in constant
    time): another site's page can make the browser send the cookie, not read the token.
    Not 403 `forbidden`, which names a scope the caller lacks: this request is not
    authenticated as the session at all."""
    if method in SAFE_METHODS:
        return
    if header is None or not hmac.compare_digest(header.encode(), session.csrf.encode()):
        raise errors.unauthorized("missing or wrong X-CSRF-Token for this console session")


def session_key(cookie: str, secret: str, keys: tuple[ServiceKey, ...], method: str,
                csrf_header: str | None) -> ServiceKey:
    """The service key a console request acts with: the cookie's session verified, its key
    still configured, and (for a mutation) its CSRF token sent back."""
    session = verify(secret, cookie)
    key = current_key(session, keys, secret)
    check_csrf(session, method, csrf_header)
    return key
