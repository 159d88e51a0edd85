"""Settings: read once, fail loudly by name, never show a secret."""

from __future__ import annotations

import pytest

from server.config import ConfigError, Settings

BASE = {
    "DATABASE_URL": "postgresql://app:db-password@db/credits",
    "BALANCE_SERVICE_KEYS": "sk_live_0123456789abcdef,sk_live_fedcba9876543210",
    "BALANCE_TOKEN_SECRET": "t" * 40,
    "REDIS_URL": "redis://:redis-password@cache:6379/0",
    "BALANCE_STRIPE_WEBHOOK_SECRET": "whsec_stripe_secret",
}


def test_repr_shows_no_secret() -> None:
    text = repr(Settings.from_env(BASE))
    for secret in ("db-password", "redis-password", "sk_live_", "tttt", "whsec_"):
        assert secret not in text


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"BALANCE_SERVICE_KEYS": ""}, "BALANCE_SERVICE_KEYS"),
        ({"BALANCE_SERVICE_KEYS": "short"}, "BALANCE_SERVICE_KEYS"),
        ({"BALANCE_TOKEN_SECRET": "too-short"}, "BALANCE_TOKEN_SECRET"),
        ({"BALANCE_WELCOME_CREDITS": "ten"}, "BALANCE_WELCOME_CREDITS"),
        ({"BALANCE_REFUND_POLICY": "forgive"}, "BALANCE_REFUND_POLICY"),
        ({"BALANCE_DODO_WEBHOOK_SECRET": "whsec_***not base64***"}, "BALANCE_DODO_WEBHOOK_SECRET"),
        ({"BALANCE_WS_MAX_UNAUTHENTICATED": "0"}, "BALANCE_WS_MAX_UNAUTHENTICATED "),
        ({"BALANCE_WS_MAX_UNAUTHENTICATED_PER_ADDRESS": "-1"},
         "BALANCE_WS_MAX_UNAUTHENTICATED_PER_ADDRESS"),
    ],
)
def test_bad_setting_names_itself(change: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env({**BASE, **change})
