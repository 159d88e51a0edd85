"""Webhook signatures, checked on the raw bytes before anything reads them.

Stripe signs `t.payload` with HMAC-SHA256 (`Stripe-Signature: t=...,v1=...`); Standard
Webhooks (Dodo) signs `id.timestamp.payload` (`webhook-signature: v1,<base64> ...`). Every
candidate is compared in constant time, and a timestamp more than 300 s from now either
way is refused, so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

TOLERANCE_SECONDS = 300
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


class SignatureError(Exception):
    """The webhook's signature is missing, malformed, wrong or outside the tolerance."""


def _check_time(timestamp: str, now: float) -> None:
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise SignatureError(f"timestamp is more than {TOLERANCE_SECONDS} s from now")


def stripe_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe sends for this body, secret and time."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_stripe(payload: bytes, header: str | None, secret: str, now: float) -> None:
    """Accept if any `v1=` entry is the HMAC-SHA256 of `t.payload` and `t` is recent."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed Stripe-Signature header")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value.encode("latin-1"))
    if len(timestamps) != 1 or not _TIMESTAMP_RE.fullmatch(timestamps[0]):
        raise SignatureError("Stripe-Signature needs exactly one numeric t=")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1= signature")
    expected = hmac.new(
        secret.encode(), timestamps[0].encode() + b"." + payload, hashlib.sha256
    ).hexdigest().encode()
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise SignatureError("no Stripe-Signature v1= entry matches")
    _check_time(timestamps[0], now)


def standard_signature(payload: bytes, key: bytes, msg_id: str, timestamp: int) -> str:
    """One `webhook-signature` entry (`v1,<base64>`) for this message."""
    signed = msg_id.encode("latin-1") + f".{timestamp}.".encode() + payload
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify_standard(
    payload: bytes, msg_id: str | None, timestamp: str | None, signature: str | None,
    key: bytes, now: float,
) -> None:
    """Accept if any space-separated `v1,` entry signs `id.timestamp.payload` and it is recent."""
    if not (msg_id and timestamp and signature):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise SignatureError("webhook-timestamp is not a Unix time in seconds")
    signed = msg_id.encode("latin-1") + f".{timestamp}.".encode() + payload
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    matched = False
    for entry in signature.split(" "):
        version, sep, value = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            candidate = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no webhook-signature v1 entry matches")
    _check_time(timestamp, now)
