"""What a payment event asks of the ledger, whichever provider sent it.

The provider modules (stripe.py, dodo.py) read their own event shapes into these actions;
fulfilment.py carries them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server import errors
from server.catalog import MAX_CREDITS, MAX_PACKAGES
from server.currencies import MinorUnits
from server.messages import ACCOUNT_ID_RULE, is_account_id

ID_RE = re.compile(r"[\x21-\x7e]{1,200}")  # provider ids: printable ASCII, no spaces
_CREDITS_RE = re.compile(r"[0-9]{1,13}")
_QUANTITY_RE = re.compile(r"[0-9]{1,4}")


@dataclass(frozen=True, slots=True)
class Purchase:
    """Money received for `account_id`, identified by the provider's payment id.

    The credits are not here: fulfilment computes them from the catalog and the amount
    paid. `package` is what the checkout sold, `quantity` times (an auto top-up to its
    target buys several in one payment); `claimed_credits` a metadata cross-check.
    """

    provider: str
    payment_id: str
    account_id: str
    package: str | None
    claimed_credits: int | None
    amount_paid: int | None
    currency: str | None
    event_id: str
    quantity: int = 1


@dataclass(frozen=True, slots=True)
class Refund:
    """Money given back on a payment.

    `refunded` is this refund's amount (Dodo) or, when `cumulative`, the payment's running
    total so far (Stripe's `amount_refunded`); `paid` is what it is a share of, if known.
    """

    provider: str
    payment_id: str
    refund_key: str
    refunded: int | None
    paid: int | None
    cumulative: bool
    full: bool
    event_id: str


@dataclass(frozen=True, slots=True)
class Dispute:
    """News of a chargeback: `open` (the disputed share is taken back), `won` (given back)
    or `lost` (stays taken). `amount` is the money disputed, when the event says."""

    provider: str
    payment_id: str
    dispute_id: str
    amount: int | None
    status: str
    event_id: str


@dataclass(frozen=True, slots=True)
class PaymentFailed:
    """A payment that will not arrive (Stripe's payment_intent.payment_failed): if it was an
    auto top-up's, that top-up failed."""

    payment_id: str
    error: str


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Unfulfilled:
    """A paid event we cannot act on; payment_id is set for purchases only. What the event
    did say of the purchase is kept for the operator who resolves it."""

    problem: str
    payment_id: str | None
    account_id: str | None = None
    package: str | None = None
    amount_paid: int | None = None
    currency: str | None = None
    quantity: int | None = 1  # None: the metadata's was not a number of packages


@dataclass(frozen=True, slots=True)
class SubscriptionPaid:
    """A paid period of a subscription (a first invoice or a renewal, not a proration):
    `product` is the provider's price or product id, which names the catalog plan."""

    provider: str
    subscription_id: str
    account_id: str | None  # None: its metadata names none (a review, if the plan is ours)
    product: str
    period_start: datetime
    period_end: datetime
    payment_id: str
    event_at: datetime


@dataclass(frozen=True, slots=True)
class SubscriptionFailed:
    """A renewal's payment failed: the plan goes past due. `account_id` None: the
    subscription's own, as first seen."""

    provider: str
    subscription_id: str
    account_id: str | None
    payment_id: str | None
    error: str
    event_at: datetime


@dataclass(frozen=True, slots=True)
class SubscriptionChanged:
    """What the provider says a subscription is now: `status` active, past_due or canceled,
    its product (a plan change when it is another plan's), and when a cancellation at the
    period's end takes effect. `card` is the (customer, payment method) it charges."""

    provider: str
    subscription_id: str
    account_id: str | None
    status: str
    product: str | None
    cancel_at: datetime | None
    card: tuple[str, str] | None
    event_at: datetime
    cause: str


Action = (Purchase | Refund | Dispute | PaymentFailed | Ignore | Unfulfilled
          | SubscriptionPaid | SubscriptionFailed | SubscriptionChanged)


def object_id(obj: dict[str, Any], field: str, where: str) -> str:
    value = obj.get(field)
    if isinstance(value, dict):  # an expanded object
        value = value.get("id")
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise errors.invalid_request(f"{where}.{field}: missing or not an id")
    return value


def optional_id(obj: dict[str, Any], field: str, where: str) -> str | None:
    return None if obj.get(field) is None else object_id(obj, field, where)


def money(value: Any) -> int | None:
    """A non-negative integer amount in minor units (or its digits, as Dodo sends some), or
    None."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    return value if type(value) is int and 0 <= value <= 10**15 else None


def provider_money(units: MinorUnits, value: Any, currency: str | None, *,
                   up: bool = False) -> int | None:
    """`money(value)`, sent in the provider's minor units of `currency`, in ISO 4217's (the
    catalog's and the ledger's); a fraction of one is dropped, or counted whole when `up`.
    Unrepresentable when the provider documents no units for the currency."""
    amount = money(value)
    if amount is None or not currency:
        return amount
    return units.from_provider(currency, amount, up=up)


def currency_code(value: Any) -> str | None:
    """An ISO currency code as the provider sent it (at most 16 characters), or None."""
    return value[:16] if isinstance(value, str) else None


def parse_credits(value: Any) -> int | None:
    """Credits from metadata: a string of digits, 1 … 10^12; anything else is None."""
    if not isinstance(value, str) or not _CREDITS_RE.fullmatch(value):
        return None
    credits = int(value)
    return credits if 1 <= credits <= MAX_CREDITS else None


def parse_quantity(value: Any) -> int | None:
    """How many packages metadata says were bought: absent is 1 (a checkout, a top-up of one
    package), else a string of digits 1 … MAX_PACKAGES; anything else is None."""
    if value is None or value == "":
        return 1
    if not isinstance(value, str) or not _QUANTITY_RE.fullmatch(value):
        return None
    quantity = int(value)
    return quantity if 1 <= quantity <= MAX_PACKAGES else None


def purchase_from_metadata(
    provider: str, payment_id: str, metadata: Any, event_id: str, *,
    account_keys: tuple[str, ...], credit_keys: tuple[str, ...],
    amount: int | None, currency: str | None,
) -> Purchase | Unfulfilled:
    """The purchase a paid event's metadata describes: whose it is and what was sold."""
    md: dict[str, Any] = metadata if isinstance(metadata, dict) else {}
    account = next((md[k] for k in account_keys if md.get(k) not in (None, "")), None)
    package = md.get("package") or None
    raw_credits = next((md[k] for k in credit_keys if md.get(k) not in (None, "")), None)
    problems: list[str] = []
    if account is None:
        problems.append(f"metadata {' or '.join(account_keys)} is missing")
    elif not is_account_id(account):
        problems.append(f"metadata {account_keys[0]} is not an account id ({ACCOUNT_ID_RULE})")
    if package is not None and not isinstance(package, str):
        problems.append("metadata package is not a string")
    claimed = None if raw_credits is None else parse_credits(raw_credits)
    if raw_credits is not None and claimed is None:
        problems.append(f"metadata {credit_keys[0]} is not a whole number 1..10^12")
    quantity = parse_quantity(md.get("quantity"))
    if quantity is None:
        problems.append(f"metadata quantity is not a whole number 1..{MAX_PACKAGES}")
    if problems or not isinstance(account, str) or not isinstance(package, str | None):
        return Unfulfilled("; ".join(problems), payment_id,
                           account if is_account_id(account) else None,
                           package if isinstance(package, str) else None, amount, currency,
                           quantity)
    return Purchase(provider, payment_id, account, package, claimed, amount, currency, event_id,
                    quantity or 1)


def account_in(metadata: Any, keys: tuple[str, ...]) -> str | None:
    """The account a subscription's metadata names (the first of `keys` set), if it is an
    account id."""
    md: dict[str, Any] = metadata if isinstance(metadata, dict) else {}
    account = next((md[k] for k in keys if md.get(k) not in (None, "")), None)
    return account if isinstance(account, str) and is_account_id(account) else None


def unix_time(value: Any, where: str) -> datetime:
    """A provider's Unix timestamp (seconds) as a datetime; 422 when it is not one."""
    if type(value) is not int or not 0 < value < 2**37:
        raise errors.invalid_request(f"{where}: missing or not a Unix timestamp")
    return datetime.fromtimestamp(value, UTC)


def iso_time(value: Any, where: str) -> datetime:
    """A provider's ISO 8601 timestamp as an aware datetime; 422 when it is not one."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise errors.invalid_request(f"{where}: missing or not an ISO 8601 time with a zone")
    return parsed
