"""Log lines: one shape (text, or JSON lines), the request's id and account on each, and
no secret in any of them.

`setup` runs once, in the command line's `serve` and `dev`; everything else logs through
`logging` as usual. The HTTP layer puts the request's id and account into the context
variables below, so any line logged while a request is handled carries them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from random import getrandbits
from time import monotonic
from typing import Any, TextIO
from urllib.parse import urlsplit

from server.config import Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("balance.request_id", default=None)
ACCOUNT: ContextVar[str | None] = ContextVar("balance.account", default=None)

_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,128}")
_REDACTED = "***"
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@\s/]+@", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"(\b[\w-]*(?:token|password|passwd|pwd|secret|api_?key)=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(\bbearer\s+)[^\s\"',]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]+")
_SHORTEST_SECRET = 8  # a shorter configured value would blank out ordinary words


def request_id(given: str | None) -> str:
    """The caller's request id when it is fit to log and echo (printable ASCII, at most 128
    characters), else a new one: 16 hex digits, unique enough to find a request's lines."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return getrandbits(64).to_bytes(8).hex()


class Scrubber:
    """Removes from a log line every configured secret, and what looks like a credential:
    a password in a URL, a `token=`/`password=`/`secret=` parameter, a bearer token, a JWT."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first: a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= _SHORTEST_SECRET},
                               key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        text = _URL_PASSWORD.sub(rf"\1{_REDACTED}@", text)
        text = _SECRET_PARAM.sub(rf"\1{_REDACTED}", text)
        text = _BEARER.sub(rf"\1{_REDACTED}", text)
        return _JWT.sub(_REDACTED, text)


def secrets_of(settings: Settings) -> list[str]:
    """The settings' secret values (the fields kept out of their repr), and the passwords
    in the URLs among them (the rest of a URL is worth seeing)."""
    found: list[str] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.repr or value is None:
            continue
        if f.name.endswith("_url"):
            try:
                password = urlsplit(value).password
            except ValueError:
                continue
            found.extend([password] if password else [])
        elif isinstance(value, str):
            found.append(value)
        elif isinstance(value, tuple):  # the service keys
            found.extend(key.secret for key in value)
    return found


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC, to the millisecond: 2026-01-31T12:00:00.123Z."""
    seconds, fraction = divmod(created, 1)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{int(fraction * 1000):03d}Z"


class Text(logging.Formatter):
    """`2026-01-31T12:00:00.123Z INFO balance.api message request_id=... account=...`, the
    traceback on the lines after it."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._scrub = scrub

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        if (request_id := REQUEST_ID.get()) is not None:
            line += f" request_id={request_id}"
        if (account := ACCOUNT.get()) is not None:
            line += f" account={account}"
        return line

    def format(self, record: logging.LogRecord) -> str:
        return self._scrub(super().format(record))


class JsonLines(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, and request_id, account, exc when
    there are any."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self._scrub(record.getMessage()),
        }
        if (request_id := REQUEST_ID.get()) is not None:
            line["request_id"] = request_id
        if (account := ACCOUNT.get()) is not None:
            line["account"] = account
        if record.exc_info:
            line["exc"] = self._scrub(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self._scrub(self.formatStack(record.stack_info))
        return json.dumps(line)


def handler(log_format: str, scrub: Scrubber, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `log_format` ("text" or "json") lines to `stream` (stderr)."""
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(JsonLines(scrub) if log_format == "json" else Text(scrub))
    return out


def setup(settings: Settings, stream: TextIO | None = None) -> None:
    """Send every log line through one handler in BALANCE_LOG_FORMAT: ours and uvicorn's at
    BALANCE_LOG_LEVEL, other libraries' from WARNING up (at DEBUG they would say what they
    send and receive)."""
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler(settings.log_format, Scrubber(secrets_of(settings)), stream))
    root.setLevel(max(level, logging.WARNING))
    for name in ("balance", "uvicorn", "uvicorn.error"):
        ours = logging.getLogger(name)
        ours.setLevel(level)
        ours.handlers.clear()
        ours.propagate = True


class Failures:
    """A background loop's failures, logged with their traceback at most once a minute per
    exception type, the next line counting the ones left out: an outage of a minute is a
    line, not one per retry."""

    EVERY = 60.0  # seconds

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self._last: dict[type[BaseException], tuple[float, int]] = {}  # at, left out since

    def __call__(self, exc: BaseException) -> None:
        kind = type(exc)
        now = monotonic()
        at, left_out = self._last.get(kind, (-math.inf, 0))
        if now - at < self.EVERY:
            self._last[kind] = (at, left_out + 1)
            return
        self._last[kind] = (now, 0)
        more = f" ({left_out} more since the last, not shown)" if left_out else ""
        self._log.error("%s: %s%s", self._what, kind.__name__, more, exc_info=exc)
