"""msgspec Structs for every request body, response and WebSocket frame, and the account id.

Each request type has one Decoder, built on first use and reused; `decode_body` maps
msgspec's validation errors onto the contract's 400 / 422.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeGuard, TypeVar

import msgspec

from server import errors
from server.catalog import MAX_CREDITS, MAX_QUANTITY, Money

# The account id rule (API.md "Words"): 1-128 of these characters, the whole string.
ACCOUNT_ID_RULE = "1-128 characters of A-Za-z0-9_.:@|-"
_ACCOUNT_ID = r"[A-Za-z0-9_.:@|-]{1,128}"
_account_id = re.compile(_ACCOUNT_ID)


def is_account_id(value: object) -> TypeGuard[str]:
    """Whether `value` is a valid account id: a str that the rule matches whole."""
    return isinstance(value, str) and _account_id.fullmatch(value) is not None


# msgspec searches with Python's `re`, where `$` also matches before a final newline;
# `(?!\n)` closes that door and means the same in JSON Schema's ECMA regexes.
ACCOUNT_ID_PATTERN = rf"^{_ACCOUNT_ID}$(?!\n)"
AccountId = Annotated[str, msgspec.Meta(pattern=ACCOUNT_ID_PATTERN)]
Amount = Annotated[int, msgspec.Meta(ge=1, le=MAX_CREDITS)]
# PostgreSQL's text and jsonb refuse NUL. `decode_body` refuses it with a clear message (one
# walk, only when the body holds an escaped NUL), so the rule is stated to OpenAPI only.
NO_NUL = r"^[^\u0000]*$"
_no_nul: dict[str, Any] = {"pattern": NO_NUL}
# Keys starting `webhook:` or `system:` are the server's own (payments, jobs): refused here.
IdempotencyKey = Annotated[str, msgspec.Meta(
    min_length=1, max_length=200, pattern=r"^(?!webhook:|system:)[^\u0000]*$")]
Reason = Annotated[str, msgspec.Meta(max_length=500, extra_json_schema=_no_nul)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]  # RFC 3339, with its offset
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, extra_json_schema=_no_nul)]
# Any JSON object; "JsonValue" is defined beside it in /openapi.json (NUL-free strings).
Metadata = Annotated[dict[str, Any], msgspec.Meta(extra_json_schema={
    "propertyNames": _no_nul, "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}})]
JSON_VALUE_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "string", **_no_nul}, {"type": ["number", "boolean", "null"]},
    {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
    {"type": "object", "propertyNames": _no_nul,
     "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
]}

# ---------------------------------------------------------------- requests


class DebitRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: Amount
    reason: Reason
    idempotency_key: IdempotencyKey
    metadata: Metadata | None = None


class CreditRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: Amount
    kind: Literal["grant", "purchase", "refund"]
    idempotency_key: IdempotencyKey
    reason: Reason | None = None
    expires_at: Timestamp | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    metadata: Metadata | None = None


class AdjustRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=-MAX_CREDITS, le=MAX_CREDITS,
                                        extra_json_schema={"not": {"const": 0}})]
    reason: Reason
    actor: Name
    idempotency_key: IdempotencyKey


Note = Annotated[str, msgspec.Meta(min_length=1, max_length=500, extra_json_schema=_no_nul)]


class CreditReviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A payment under review, credited: the catalog's credits for the money its event names
    unless `credits` says otherwise, to the account it names unless `account_id` does;
    `note` says why."""

    note: Note
    credits: Amount | None = None
    account_id: AccountId | None = None


class DismissReviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A payment under review, dismissed: nothing is credited; `note` says why."""

    note: Note


class ChargeRequest(msgspec.Struct, forbid_unknown_fields=True):
    operation: Name
    idempotency_key: IdempotencyKey
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)] = 1
    metadata: Metadata | None = None


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True):
    """An `amount` (with its `reason`), or an `operation` and `quantity` priced as a charge
    (reason: the operation's name unless given): one of the two."""

    idempotency_key: IdempotencyKey
    amount: Amount | None = None
    operation: Name | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)] = 1
    reason: Reason | None = None
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 300
    metadata: Metadata | None = None


class CaptureRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: Amount | None = None
    metadata: Metadata | None = None


Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2000, extra_json_schema=_no_nul)]


class CheckoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A package, an amount for pay-as-you-go, or a plan's subscription; where the provider
    sends the buyer back."""

    provider: Literal["stripe", "dodo"]
    success_url: Url
    idempotency_key: IdempotencyKey
    package: Name | None = None
    plan: Name | None = None
    amount: Annotated[int, msgspec.Meta(ge=1, le=10**15)] | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Za-z]{3}$")] | None = None
    cancel_url: Url | None = None
    customer_email: Annotated[str, msgspec.Meta(
        min_length=3, max_length=320, extra_json_schema=_no_nul)] | None = None


class PlanRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A catalog plan, or null to remove the account's; `anchor`: where periods start."""

    plan: Name | None
    idempotency_key: IdempotencyKey
    anchor: Timestamp | None = None


class CheckRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A charge (`operation`, `quantity`) or a debit (`amount`) to check, not to make."""

    operation: Name | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)] = 1
    amount: Amount | None = None


class AlertsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The account's own low_balance threshold, or null for its plan's or the catalog's.
    A setting, idempotent by nature: an idempotency_key is accepted and ignored."""

    low_balance: Annotated[int, msgspec.Meta(ge=0, le=MAX_CREDITS)] | None
    idempotency_key: IdempotencyKey | None = None


SpendPeriod = Literal["hour", "day", "month"]  # a spend cap's UTC calendar window


class SpendLimit(msgspec.Struct, forbid_unknown_fields=True):
    """At most `amount` credits spent (debits, charges, captures) and held together per UTC
    calendar `period`."""

    amount: Amount
    period: SpendPeriod


class LimitsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The account's spend cap, or null to remove it. A setting, idempotent by nature: an
    idempotency_key is accepted and ignored."""

    spend: SpendLimit | None
    idempotency_key: IdempotencyKey | None = None


StripeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{3,255}$")]


class AutoTopUpRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Buy `package` off session when `available` falls below `threshold` (a body of `null`
    turns it off): as many as bring it up to `target`, within `monthly_limit` (minor units of
    the package's currency) a UTC month, charging the Stripe customer's payment method (both
    left out: the card the account's checkout saved). A setting: an idempotency_key is
    accepted and ignored."""

    package: Name
    threshold: Annotated[int, msgspec.Meta(ge=1, le=MAX_CREDITS)]
    stripe_customer: StripeId | None = None
    stripe_payment_method: StripeId | None = None
    target: Annotated[int, msgspec.Meta(ge=2, le=MAX_CREDITS)] | None = None
    monthly_limit: Money | None = None
    idempotency_key: IdempotencyKey | None = None


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    account_id: AccountId
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 3600


# ---------------------------------------------------------------- WebSocket frames


class ChangeInfo(msgspec.Struct):
    kind: str
    amount: int
    reason: str | None
    transaction_id: int | None
    hold_id: str | None


class BalanceFrame(msgspec.Struct, tag="balance", tag_field="type"):
    account_id: str
    balance: int
    held: int
    available: int
    version: int
    low: bool = False  # available is below the account's low_balance threshold (or <= 0)
    change: ChangeInfo | None = None


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type"):
    code: str
    message: str = ""


class AuthMessage(msgspec.Struct, tag="auth", tag_field="type"):
    token: str


class SyncMessage(msgspec.Struct, tag="sync", tag_field="type"):
    versions: dict[str, int] = {}


ClientMessage = AuthMessage | SyncMessage

# ---------------------------------------------------------------- decoding

T = TypeVar("T")
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decoder_for(kind: type[T]) -> msgspec.json.Decoder[T]:
    """The one reused Decoder for a request type."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


MAX_DEPTH = 32  # of nested objects and arrays in a body (metadata, in practice)


def decode_body(kind: type[T], body: bytes, *, strict: bool = True) -> T:
    """Decode and validate a request body, raising the contract's 400 / 422.

    With `strict`, deep nesting (which would exhaust PostgreSQL's jsonb parser) and NUL
    characters (which PostgreSQL's text and jsonb refuse, failing a whole group commit) are
    refused up front. Provider events are read with strict off: their bodies never reach
    the database as they are, and a 4xx would only make the provider send them for days.
    """
    try:
        value = decoder_for(kind).decode(body or b"{}")
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise errors.invalid_request(str(exc)) from None
        value = _with_integral_floats(kind, body)
    except msgspec.DecodeError:
        raise errors.invalid_json() from None
    except RecursionError:
        raise errors.invalid_request(f"nested more than {MAX_DEPTH} levels deep") from None
    # Only a body with many brackets or an escaped NUL needs the walk: never a plain debit.
    if strict and (b"\\u0000" in body or body.count(b"[") + body.count(b"{") > MAX_DEPTH):
        _check_tree(msgspec.to_builtins(value), 0)
    return value


def _with_integral_floats(kind: type[T], body: bytes) -> T:
    """JSON has one number type: 5.0 is the integer 5 to JSON Schema and to JavaScript, so
    an integral float is taken where the type wants an int, in a nested object too (a spend
    cap's amount). Only a body that failed on a float comes here; any other error is reported
    as decoding it strictly would."""
    raw = msgspec.json.decode(body)
    _as_ints(kind, raw)
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise errors.invalid_request(str(exc)) from None


def _as_ints(kind: Any, raw: object) -> None:
    """Integral floats in `raw` made ints where the Struct `kind` wants an int."""
    if not isinstance(raw, dict):
        return
    for field in msgspec.structs.fields(kind):
        item = raw.get(field.encode_name)
        options = _options(field.type)
        if isinstance(item, float) and item.is_integer() and any(
                isinstance(t, msgspec.inspect.IntType) for t in options):
            raw[field.encode_name] = int(item)
        elif isinstance(item, dict):
            for option in options:
                if isinstance(option, msgspec.inspect.StructType):
                    _as_ints(option.cls, item)


def _options(annotation: Any) -> tuple[msgspec.inspect.Type, ...]:
    """The types a field's annotation allows (its union's members, its metadata unwrapped)."""
    info = msgspec.inspect.type_info(annotation)
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        return tuple(t.type if isinstance(t, msgspec.inspect.Metadata) else t
                     for t in info.types)
    return (info,)


def _check_tree(node: object, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise errors.invalid_request(f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, str):
        if "\x00" in node:
            raise errors.invalid_request("strings may not contain NUL (\\u0000)")
    elif isinstance(node, dict):
        for key, item in node.items():
            _check_tree(key, depth + 1)
            _check_tree(item, depth + 1)
    elif isinstance(node, list):
        for item in node:
            _check_tree(item, depth + 1)


encoder = msgspec.json.Encoder()


client_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)
"""The one Decoder for frames a browser sends on /v1/ws."""
