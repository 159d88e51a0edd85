"""Schemathesis hooks for tests/api/test_openapi.py: the rules JSON Schema cannot state.

A credit's `expires_at` must be in the future, and a usage range spans at most 366 days:
both are relative to the clock, which JSON Schema has no words for (the OpenAPI
descriptions say them). A page `cursor` must be one the server handed out (an opaque
token: any string of its alphabet, to a schema). An X-Audit-Reason is percent-encoded UTF-8
text, which a string schema cannot say. An auto top-up's target must exceed its threshold:
JSON Schema compares no two fields. What a payment under review lacks for a credit
depends on that review. Only a refusal that names exactly one of these rules is forgiven;
every other finding fails the run.
"""

from __future__ import annotations

import schemathesis

UNSTATED_RULES = (
    '"detail":"expires_at: must be in the future"',
    '"detail":"since: at most 366 days before until (or now)"',
    '"detail":"cursor: not a cursor this server gave"',
    '"detail":"X-Audit-Reason: 1-500 printable characters, percent-encoded UTF-8"',
    '"detail":"target: must be greater than threshold"',
    '"detail":"stripe_customer, stripe_payment_method: give both, or neither for the card the'
    ' account\'s checkout saved"',
    # What crediting a payment under review needs that its event did not say: a schema
    # cannot know which review lacks an account, a price or a payment.
    '"detail":"account_id: the payment names no account; say whose it is"',
    '"detail":"credits: the catalog cannot price this payment; state the credits"',
    '"detail":"review_id: this event names no payment to credit; dismiss it (and adjust the'
    ' account if credits are owed)"',
    '"detail":"account_id: this payment\'s key is already used on that account; dismiss the'
    ' review and adjust the account, or credit another account"',
    # What an account's own subscription decides: whether a checkout saved its card, and
    # whether a provider's subscription drives its plan.
    '"detail":"stripe_customer: none given, and no checkout of this account saved a card (a'
    ' plan\'s Stripe checkout does)"',
    '; change or cancel it there"',
    '; change the plan there (an upgrade or a downgrade)"',
)


@schemathesis.hook
def filter_failure(context: schemathesis.HookContext, failure: object, case: object,
                   response: schemathesis.Response) -> bool:
    """False (forgive) only for a 422 that names one of those rules."""
    return not (response.status_code == 422
                and any(rule in response.text for rule in UNSTATED_RULES))
