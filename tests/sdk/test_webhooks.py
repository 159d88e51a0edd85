"""App webhooks verified by the SDK: as the server signs them (the same Standard Webhooks
library), and refused when forged, altered or stale."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from balance_client import WebhookVerificationError, verify_webhook

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
BODY = json.dumps({"type": "balance.low", "timestamp": "2026-12-07T10:00:00.000000Z",
                   "data": {"account": {"account_id": "alice", "available": 3}}}).encode()


def signed(body: bytes, at: float, secret: str = SECRET) -> dict[str, str]:
    stamp = datetime.fromtimestamp(int(at), UTC)
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(int(at)),
            "Webhook-Signature": Webhook(secret).sign("msg_1", stamp, body.decode())}


def test_a_signed_event_is_read() -> None:
    event = verify_webhook(SECRET, BODY, signed(BODY, time.time()))
    assert (event.id, event.type, event.data["account"]["available"]) == ("msg_1", "balance.low", 3)
    assert event.timestamp.year == 2026


@pytest.mark.parametrize("case", ["altered", "forged", "stale", "unsigned", "not an event"])
def test_anything_else_is_refused(case: str) -> None:
    body, headers = BODY, signed(BODY, time.time())
    if case == "altered":
        body = BODY.replace(b"3", b"4")
    elif case == "forged":
        headers = signed(BODY, time.time(), "whsec_" + base64.b64encode(b"x" * 24).decode())
    elif case == "stale":
        headers = signed(BODY, time.time() - 600)
    elif case == "unsigned":
        headers = {}
    else:
        body = b"[1, 2]"
        headers = signed(body, time.time())
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, body, headers)
