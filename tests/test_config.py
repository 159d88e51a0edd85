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
        ({"BALANCE_SERVICE_KEYS": "worker:write:sk_live_0123456789abcdef"}, "scope 'write'"),
        ({"BALANCE_SERVICE_KEYS": "worker:spend:short"}, "'worker' must be at least 16"),
        ({"BALANCE_SERVICE_KEYS": "a b:read:sk_live_0123456789abcdef"}, "key name 'a b'"),
        ({"BALANCE_SERVICE_KEYS": "w:read:sk_live_0123456789abcdef,"
                                  "w:spend:sk_live_fedcba9876543210"}, "its own name"),
        ({"BALANCE_SERVICE_KEYS": "a:read:sk_live_0123456789abcdef,"
                                  "b:spend:sk_live_0123456789abcdef"}, "its own key"),
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


def test_service_keys_have_names_and_scopes() -> None:
    """`name:scope:key`, or a bare key: an admin key named by its position, as every key
    was before scopes (existing settings keep working)."""
    settings = Settings.from_env({**BASE, "BALANCE_SERVICE_KEYS":
                                  "sk_live_0123456789abcdef, worker:spend:sk_live_fedcba9876543210,"
                                  "support:read:sk_live_support_000001"})
    assert [(k.name, k.scope, k.secret) for k in settings.service_keys] == [
        ("key1", "admin", "sk_live_0123456789abcdef"),
        ("worker", "spend", "sk_live_fedcba9876543210"),
        ("support", "read", "sk_live_support_000001")]
    admin, worker, support = settings.service_keys
    assert [admin.allows(s) for s in ("read", "spend", "admin")] == [True, True, True]
    assert [worker.allows(s) for s in ("read", "spend", "admin")] == [True, True, False]
    assert [support.allows(s) for s in ("read", "spend", "admin")] == [True, False, False]
    assert "sk_live" not in repr(settings.service_keys)
