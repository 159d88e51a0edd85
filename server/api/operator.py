"""The operator routes: find accounts, list payments, resolve a payment under review, and
read the audit log of what operators did."""

from __future__ import annotations

from starlette.requests import Request

from server import audit, directory, errors
from server.api.http import (
    CURSOR,
    PAGE_SIZE,
    account_query,
    actor,
    audit_reason,
    id_param,
    int_query,
    read_body,
    resources,
    text_query,
)
from server.ledger import Outcome, request_hash
from server.messages import CreditReviewRequest, DismissReviewRequest, decode_body

PREFIX_MOST = 128  # an account id's longest
CURSOR_MOST = 1000


def _limit(request: Request) -> int:
    limit = int_query(request, "limit", 50, *PAGE_SIZE)
    assert limit is not None
    return limit


async def search_accounts(request: Request) -> bytes:
    """Accounts whose id starts with `prefix`, the last changed first."""
    prefix = text_query(request, "prefix", PREFIX_MOST) or ""
    return await directory.accounts(resources(request).pool, prefix, _limit(request),
                                    text_query(request, "cursor", CURSOR_MOST))


async def list_payments(request: Request) -> bytes:
    """Payments in one status, newest first."""
    status = request.query_params.get("status")
    if status not in directory.PAYMENT_STATUSES:
        raise errors.invalid_request(
            f"status: must be one of {', '.join(directory.PAYMENT_STATUSES)}")
    return await directory.payments(resources(request).pool, status, account_query(request),
                                    _limit(request), text_query(request, "cursor", CURSOR_MOST))


async def credit_review(request: Request) -> Outcome:
    """Credit a payment under review, once."""
    review_id = id_param(request, "review")
    body = decode_body(CreditReviewRequest, await read_body(request))
    return await resources(request).fulfilment.resolve(
        review_id, "credit", body.note, actor(request), request_hash("credit_review", body),
        audit_reason(request), credits=body.credits, account_id=body.account_id)


async def dismiss_review(request: Request) -> Outcome:
    """Dismiss a payment under review (credit nothing), once."""
    review_id = id_param(request, "review")
    body = decode_body(DismissReviewRequest, await read_body(request))
    return await resources(request).fulfilment.resolve(
        review_id, "dismiss", body.note, actor(request), request_hash("dismiss_review", body),
        audit_reason(request))


async def audit_log(request: Request) -> bytes:
    """What operators did, newest first."""
    return await audit.page(resources(request).pool, account_query(request),
                            int_query(request, "before", None, *CURSOR), _limit(request))
