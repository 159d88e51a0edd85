"""Log lines: their two shapes, the request's id and account on them, no secret in any, and
a background loop's failures with their traceback, at most one a minute per kind."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from server import logs
from server.config import ConfigError, Settings
from server.logs import Failures, Scrubber

ENV = {"DATABASE_URL": "postgresql://app:pg-password-1@db.example/credits",
       "BALANCE_SERVICE_KEYS": "sk_live_service_key_0001,sk_live_service_key_0002",
       "BALANCE_TOKEN_SECRET": "t" * 40,
       "BALANCE_APP_WEBHOOK_URL": "https://app.example/hooks",
       "BALANCE_APP_WEBHOOK_SECRET": "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ=",
       "REDIS_URL": "redis://:redis-password-2@cache.example:6379/0"}


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of ours writing through a JSON handler made as `setup` makes it."""
    out = io.StringIO()
    logger = logging.getLogger("balance.test_logs")
    handler = logs.handler("json", Scrubber(logs.secrets_of(Settings.from_env(ENV))), out)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_carries_the_request_id_the_account_and_the_traceback(
    captured: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, out = captured
    logger.info("outside any request")
    rid, account = logs.REQUEST_ID.set("req-1"), logs.ACCOUNT.set("alice")
    try:
        try:
            raise ValueError("it broke")
        except ValueError:
            logger.exception("inside one")
    finally:
        logs.REQUEST_ID.reset(rid)
        logs.ACCOUNT.reset(account)
    outside, inside = lines(out)
    assert set(outside) == {"ts", "level", "logger", "msg"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", outside["ts"])
    assert (outside["level"], outside["logger"]) == ("info", "balance.test_logs")
    assert inside["msg"] == "inside one" and inside["level"] == "error"
    assert (inside["request_id"], inside["account"]) == ("req-1", "alice")
    assert inside["exc"].startswith("Traceback") and "ValueError: it broke" in inside["exc"]


def test_a_text_line_says_the_same() -> None:
    out = io.StringIO()
    record = logging.LogRecord("balance.api", logging.WARNING, __file__, 1, "slow %s", ("x",),
                               None)
    handler = logs.handler("text", Scrubber(), out)
    token = logs.REQUEST_ID.set("req-2")
    try:
        handler.handle(record)
    finally:
        logs.REQUEST_ID.reset(token)
    assert re.fullmatch(r"\S+Z WARNING balance\.api slow x request_id=req-2\n", out.getvalue())


def test_no_secret_reaches_a_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXBhcnQ"
    logger.warning("keys %s and %s", "sk_live_service_key_0001", "sk_live_service_key_0002")
    logger.warning("secret %s", ENV["BALANCE_APP_WEBHOOK_SECRET"])
    logger.warning("connecting to %s and %s", ENV["DATABASE_URL"], ENV["REDIS_URL"])
    logger.warning("GET /v1/ws?token=%s&x=1 with Authorization: Bearer %s", jwt, "opaque-1")
    logger.warning("a bare token %s", jwt)
    try:
        raise RuntimeError(f"could not use {ENV['BALANCE_TOKEN_SECRET']}")
    except RuntimeError:
        logger.exception("failed")
    text = out.getvalue()
    for secret in ("sk_live_service_key_0001", "sk_live_service_key_0002",
                   ENV["BALANCE_APP_WEBHOOK_SECRET"], "pg-password-1", "redis-password-2",
                   ENV["BALANCE_TOKEN_SECRET"], jwt, "opaque-1"):
        assert secret not in text, secret
    # What is not secret is still there to read.
    assert "app:***@db.example/credits" in text and "cache.example:6379" in text
    assert "token=***&x=1" in text and "Bearer ***" in text


def test_setup_sends_ours_and_uvicorns_lines_through_one_handler() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    ours = {name: (logging.getLogger(name).level, logging.getLogger(name).handlers[:])
            for name in ("balance", "uvicorn", "uvicorn.error")}
    out = io.StringIO()
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # as an earlier server left it
    try:
        logs.setup(Settings.from_env({**ENV, "BALANCE_LOG_FORMAT": "json",
                                      "BALANCE_LOG_LEVEL": "debug"}), out)
        logging.getLogger("balance.jobs").debug("ours at debug")
        logging.getLogger("uvicorn.error").info("uvicorn's")
        logging.getLogger("some.library").info("a library's info: below warning")
        logging.getLogger("some.library").warning("a library's warning")
        assert [line["msg"] for line in lines(out)] == [
            "ours at debug", "uvicorn's", "a library's warning"]
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, (level, handlers) in ours.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).handlers[:] = handlers


def test_log_settings_fail_by_name() -> None:
    assert (Settings.from_env(ENV).log_format, Settings.from_env(ENV).log_level) == (
        "text", "info")
    settings = Settings.from_env({**ENV, "BALANCE_LOG_FORMAT": "JSON",
                                  "BALANCE_LOG_LEVEL": "Warning"})
    assert (settings.log_format, settings.log_level) == ("json", "warning")
    with pytest.raises(ConfigError, match="BALANCE_LOG_FORMAT"):
        Settings.from_env({**ENV, "BALANCE_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="BALANCE_LOG_LEVEL"):
        Settings.from_env({**ENV, "BALANCE_LOG_LEVEL": "verbose"})


def test_a_request_id_is_kept_when_fit_to_log_and_made_otherwise() -> None:
    assert logs.request_id("abc-123_XYZ:1") == "abc-123_XYZ:1"
    assert logs.request_id("x" * 128) == "x" * 128
    for unfit in (None, "", "x" * 129, "tab\there", "new\nline", "ünïcode"):
        made = logs.request_id(unfit)
        assert re.fullmatch(r"[0-9a-f]{16}", made), unfit
    assert logs.request_id(None) != logs.request_id(None)


def test_a_loop_failing_all_minute_logs_one_traceback_per_kind(
    captured: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, out = captured
    now = 1000.0
    monkeypatch.setattr(logs, "monotonic", lambda: now)
    failed = Failures(logger, "sweep failed")

    def fail(exc: Exception) -> None:
        try:
            raise exc
        except Exception as raised:
            failed(raised)

    for _ in range(100):  # a database outage, a retry every half second
        fail(ConnectionRefusedError("refused"))
        now += 0.5
    fail(TimeoutError())  # another kind has a line of its own
    now += 11
    fail(ConnectionRefusedError("refused"))
    got = lines(out)
    assert [line["msg"] for line in got] == [
        "sweep failed: ConnectionRefusedError",
        "sweep failed: TimeoutError",
        "sweep failed: ConnectionRefusedError (99 more since the last, not shown)",
    ]
    assert all(line["level"] == "error" and "Traceback" in line["exc"] for line in got)
    assert "ConnectionRefusedError: refused" in got[0]["exc"]
