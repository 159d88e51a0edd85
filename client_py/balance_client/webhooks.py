"""App webhooks: verify the signature (Standard Webhooks, by its reference library) on the
raw body, then read the event."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _Invalid

from balance_client.errors import WebhookVerificationError
from balance_client.models import WebhookEvent

_BODY = msgspec.json.Decoder()


def verify_webhook(secret: str, body: bytes | str, headers: Mapping[str, str]) -> WebhookEvent:
    """The event of an app webhook (`BALANCE_APP_WEBHOOK_SECRET`, `whsec_...`), checked on
    the raw body as received; WebhookVerificationError when it is forged, altered, or
    signed more than 5 minutes from now (a replay). Deduplicate on `event.id`: a redelivery
    carries the same one."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        Webhook(secret).verify(body, lowered, json_parse=False)
    except _Invalid as exc:
        raise WebhookVerificationError(str(exc)) from None
    try:
        data = _BODY.decode(body)
        return msgspec.convert({**data, "id": lowered["webhook-id"]}, WebhookEvent)
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
        raise WebhookVerificationError(f"a signed body that is not an event: {exc}") from None
