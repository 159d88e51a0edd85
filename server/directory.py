"""Reads across accounts, for operators: accounts by id prefix, payments by status.

Their pages are keyset-paged on what they sort by; the cursor handed out is that key,
opaque to the caller (base64url of JSON), and one it did not get from us is a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from server import errors

# What GET /v1/payments lists: credited payments by what happened to them since, and the
# paid events that could not be credited, open (needs_review) or resolved.
PAYMENT_STATUSES = ("credited", "needs_review", "reversed", "disputed", "resolved")
_REVIEWS = ("needs_review", "resolved")


def _cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _uncursor(raw: str | None, shape: tuple[type, ...]) -> list[Any] | None:
    """A cursor's key, checked against the types it was made of, or 422."""
    if raw is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        key = None
    if not isinstance(key, list) or len(key) != len(shape) or not all(
            _fits(v, t) for v, t in zip(key, shape, strict=True)):
        raise errors.invalid_request("cursor: not a cursor this server gave")
    return key


def _fits(value: object, kind: type) -> bool:
    if isinstance(value, int) and type(value) is kind:
        return 0 < value < 2**63
    # Printable: no NUL (PostgreSQL's text refuses it) and no lone surrogate (not UTF-8).
    return isinstance(value, str) and kind is str and len(value) <= 300 and value.isprintable()


def _at(value: str) -> datetime:
    """A cursor's timestamp, in UTC (one PostgreSQL's range holds), or 422."""
    try:
        at = datetime.fromisoformat(value)
        if at.tzinfo is None:
            raise ValueError("no offset")
        return at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise errors.invalid_request("cursor: not a cursor this server gave") from None


async def accounts(pool: asyncpg.Pool, prefix: str, limit: int, cursor: str | None) -> bytes:
    """`{"accounts": [...], "next": cursor}`: accounts whose id starts with `prefix`, the
    last changed first."""
    key = _uncursor(cursor, (str, str))
    row = await pool.fetchrow(
        "SELECT * FROM balance.balance_search_accounts($1, $2, $3, $4)", prefix, limit,
        None if key is None else _at(key[0]), None if key is None else key[1])
    assert row is not None
    following = None if row["next_at"] is None else _cursor(
        [row["next_at"].isoformat(), row["next_account"]])
    return _page("accounts", row["page"], following)


async def payments(pool: asyncpg.Pool, status: str, account_id: str | None, limit: int,
                   cursor: str | None) -> bytes:
    """`{"payments": [...], "next": cursor}`: payments in `status`, newest first."""
    review = status in _REVIEWS
    key = _uncursor(cursor, (int,) if review else (str, str, str))
    at = provider = payment = review_id = None
    if key is not None and review:
        review_id = key[0]
    elif key is not None:
        at, provider, payment = _at(key[0]), key[1], key[2]
    row = await pool.fetchrow(
        "SELECT * FROM balance.balance_payments($1, $2, $3, $4, $5, $6, $7)", status,
        account_id, limit, at, provider, payment, review_id)
    assert row is not None
    if row["next_review"] is not None:
        following: str | None = _cursor([row["next_review"]])
    elif row["next_at"] is not None:
        following = _cursor([row["next_at"].isoformat(), row["next_provider"],
                             row["next_payment"]])
    else:
        following = None
    return _page("payments", row["page"], following)


def _page(name: str, items: str, following: str | None) -> bytes:
    return f'{{"{name}":{items},"next":{json.dumps(following)}}}'.encode()
