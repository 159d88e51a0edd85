"""What the sync and async clients share: requests as data, the retry decisions, and the
decoding of answers and errors. Only the waiting and the I/O differ between the two."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from balance_client import errors
from balance_client.errors import BalanceError, OutcomeUnknown, Unavailable

T = TypeVar("T")

VERSION = "0.1.0"
BACKOFF_BASE = 0.1  # seconds: the first retry waits up to this
BACKOFF_CAP = 2.0  # seconds: no wait between two attempts is longer
MAX_KEY = 200  # characters, as the API's idempotency_key


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the server is, the key, and how long one attempt and one call may take."""

    base_url: str
    service_key: str
    timeout: float
    deadline: float

    @classmethod
    def resolve(cls, base_url: str | None, service_key: str | None, timeout: float,
                deadline: float) -> Settings:
        base_url = base_url or os.environ.get("BALANCE_API_URL")
        service_key = service_key or os.environ.get("BALANCE_SERVICE_KEY")
        if not base_url:
            raise ValueError("base_url: give the server's URL (or set BALANCE_API_URL)")
        if not service_key:
            raise ValueError("service_key: give a service key (or set BALANCE_SERVICE_KEY)")
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline: must be positive seconds")
        return cls(base_url.rstrip("/"), service_key, timeout, deadline)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.service_key}",
                "user-agent": f"balance-client-python/{VERSION}"}


def path(template: str, *ids: str | int) -> str:
    """The template with each {} filled by an id, percent-encoded whole (an account id may
    hold `|`, `@` or `:`)."""
    return template.format(*(quote(str(part), safe="") for part in ids))


def body(fields: dict[str, Any], **optional: Any) -> bytes:
    """JSON of `fields` (sent as they are, None included) and of the `optional` ones that
    are not None (the server applies its default)."""
    fields.update((name, value) for name, value in optional.items() if value is not None)
    return msgspec.json.encode(fields)


def query(**params: Any) -> dict[str, str]:
    return {name: value.isoformat() if hasattr(value, "isoformat") else str(value)
            for name, value in params.items() if value is not None}


def need_key(key: str) -> str:
    """The caller's idempotency key: their own job or order id, never one made up here (a
    made-up key is a new one on every retry, and a retry would charge again)."""
    if not isinstance(key, str) or not key:
        raise TypeError("key: give this call's own idempotency key (your job or order id), "
                        "the same on every retry of the same work")
    if len(key) > MAX_KEY:
        raise ValueError(f"key: at most {MAX_KEY} characters")
    return key


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API call: what to send, and what its success decodes to."""

    method: str
    path: str
    result: type[T]
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # the idempotency key of a mutation (None: a read or a setting)
    mutation: bool = False  # a retry after an attempt that may have committed is a replay
    reason: str | None = None  # an operator action's why, for the server's audit log

    def headers(self) -> dict[str, str]:
        sent = {"content-type": "application/json"} if self.content is not None else {}
        if self.reason is not None:
            sent["x-audit-reason"] = quote(self.reason, safe="")  # percent-encoded UTF-8
        return sent


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode(call: Call[T], response: httpx.Response) -> T:
    """The success's struct (replayed when the server says so), or the error raised."""
    if response.status_code >= 300:
        raise error_of(response, call.key)
    decoder = _DECODERS.get(call.result)
    if decoder is None:
        decoder = _DECODERS[call.result] = msgspec.json.Decoder(call.result)
    result = decoder.decode(response.content)
    if (response.headers.get("idempotent-replayed") == "true"
            and isinstance(result, msgspec.Struct) and hasattr(result, "replayed")):
        result = msgspec.structs.replace(result, replayed=True)
    return result  # type: ignore[no-any-return]


def error_of(response: httpx.Response, key: str | None = None) -> BalanceError:
    """The typed error of an error answer (any JSON the server might send, or none)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"error": "", "message": response.text[:200] or response.reason_phrase}
    code = str(data.get("error", ""))
    cls = errors.BY_CODE.get(code, BalanceError)
    args = (response.status_code, code, str(data.get("message", "")), data,
            response.headers.get("x-request-id"))
    if cls is OutcomeUnknown:
        return OutcomeUnknown(*args, key=key)
    return cls(*args)


# Failures before the request could reach the server: nothing was written.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures that no retry mends: a wrong URL, a request httpx refuses to send.
_FATAL = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)


class Attempts:
    """The retry decisions of one call: a network error, a timeout or a 503 is tried
    again, with the same bytes and key, after a full-jitter backoff, until the deadline."""

    def __init__(self, call: Call[Any], settings: Settings) -> None:
        self.call = call
        self.settings = settings
        self.started = time.monotonic()
        self.count = 0
        self.reached = False  # an attempt may have reached the database
        self.last: BalanceError | None = None

    def timeout(self) -> float:
        """This attempt's timeout: the setting, or what is left of the deadline."""
        left = self.settings.deadline - (time.monotonic() - self.started)
        return max(0.05, min(self.settings.timeout, left))

    def failed(self, exc: httpx.TransportError) -> float:
        """The wait before the next attempt after a network failure, or the final error."""
        if isinstance(exc, _FATAL):
            raise exc
        unsent = isinstance(exc, _UNSENT)
        self.reached |= not unsent
        what = "could not connect" if unsent else "the connection failed after the request"
        self.last = BalanceError(0, "", f"{what}: {type(exc).__name__}: {exc}")
        return self._next(None)

    def retry_after(self, response: httpx.Response) -> float | None:
        """The wait before the next attempt after this answer, None to answer it now."""
        if response.status_code != 503:
            return None
        problem = error_of(response, self.call.key)
        if isinstance(problem, OutcomeUnknown):
            self.reached = True
        elif not isinstance(problem, Unavailable):
            return None  # an unexpected 503 body: answer it as it is
        self.last = problem
        header = response.headers.get("retry-after")
        try:
            hint = float(header) if header is not None else None
        except ValueError:
            hint = None
        return self._next(hint)

    def _next(self, hint: float | None) -> float:
        delay = hint if hint is not None else random.uniform(
            0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** self.count))
        self.count += 1
        if time.monotonic() - self.started + delay >= self.settings.deadline:
            raise self._final()
        return delay

    def _final(self) -> BalanceError:
        """Out of time: OutcomeUnknown when a mutation's attempt may have committed (call
        again with the same key), else Unavailable (nothing was written)."""
        last = self.last or BalanceError(0, "", "no answer")
        took = f"after {self.count} attempts in {time.monotonic() - self.started:.1f} s"
        if self.reached and self.call.mutation:
            return OutcomeUnknown(
                last.status, "outcome_unknown",
                f"may have been done: call again with the same key ({took}; {last.message})",
                last.body, last.request_id, key=self.call.key)
        return Unavailable(last.status, "unavailable",
                           f"the server did not answer ({took}; {last.message})",
                           last.body, last.request_id)


async def wait_async(seconds: float) -> None:
    await asyncio.sleep(seconds)


def wait_sync(seconds: float) -> None:
    time.sleep(seconds)
