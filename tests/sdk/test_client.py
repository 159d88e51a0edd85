"""The Python SDK against a real server (PostgreSQL, Redis): every call it makes, typed
answers and errors, replays, reservations, pagination; the sync client through a thread
(the server runs on this test's event loop)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from balance_client import (
    AsyncBalance,
    Balance,
    Capture,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    LimitReached,
    NotFound,
    SpendLimit,
    Unauthorized,
)
from tests.conftest import RunningApp


@pytest.fixture
async def balance(app: RunningApp) -> AsyncIterator[AsyncBalance]:
    async with AsyncBalance(app.base_url, app.service_key, deadline=10) as client:
        yield client


def job() -> str:
    return f"job-{uuid.uuid4().hex}"


async def test_money_moves_once_per_key_with_typed_answers_and_errors(
        balance: AsyncBalance, account: str) -> None:
    opened = await balance.open_account(account)
    assert (opened.account_id, opened.balance) == (account, 0)
    bought = await balance.credit(account, amount=50, kind="purchase", key="order-1")
    assert (bought.transaction.kind, bought.account.balance, bought.replayed) == (
        "purchase", 50, False)
    key = job()
    spent = await balance.debit(account, amount=20, reason="generation", key=key)
    again = await balance.debit(account, amount=20, reason="generation", key=key)
    assert again.replayed and not spent.replayed
    assert again.transaction.id == spent.transaction.id and again.account.balance == 30
    with pytest.raises(IdempotencyConflict):
        await balance.debit(account, amount=21, reason="generation", key=key)
    with pytest.raises(InsufficientCredits) as refused:
        await balance.debit(account, amount=31, reason="generation", key=job())
    assert (refused.value.required, refused.value.available, refused.value.status) == (31, 30, 402)
    charged = await balance.charge(account, operation="generate_image", key=job(), quantity=2)
    assert charged.transaction.amount == -10 and charged.transaction.metadata is not None
    with pytest.raises(InvalidRequest) as unknown:
        await balance.charge(account, operation="nope", key=job())
    assert unknown.value.detail and "operation" in unknown.value.detail
    fixed = await balance.adjust(account, amount=-5, reason="support", actor="ops@x", key=job())
    assert fixed.account.balance == 15
    check = await balance.check(account, operation="generate_image", quantity=4)
    assert (check.allowed, check.cost, check.error, check.required) == (
        False, 20, "insufficient_credits", 20)
    assert (await balance.get_account(account)).balance == 15
    grants = await balance.list_grants(account)
    assert sum(g.remaining for g in grants.grants) == 15
    usage = await balance.usage(account, group_by="reason")
    assert {g.key: g.amount for g in usage.groups} == {"generation": 20, "generate_image": 10}
    assert await balance.prices() == {"generate_image": 5, "upscale": 2, "generate_video": 40}
    assert "prices" in await balance.catalog()
    token = await balance.create_token(account, ttl_seconds=60)
    assert token.token.count(".") == 2 and token.expires_at > datetime.now(UTC).timestamp()
    with pytest.raises(NotFound):
        await balance.capture_hold(str(uuid.uuid4()))


async def test_every_mutation_needs_the_callers_key(balance: AsyncBalance, account: str) -> None:
    for bad in ("", None, 7):
        with pytest.raises(TypeError, match="idempotency key"):
            await balance.debit(account, amount=1, reason="x", key=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await balance.debit(account, amount=1, reason="x")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="200"):
        await balance.credit(account, amount=1, kind="grant", key="k" * 201)
    assert (await balance.get_account(account)).version == 0  # nothing was sent


async def test_a_reservation_charges_only_work_that_succeeded(
        balance: AsyncBalance, account: str) -> None:
    await balance.credit(account, amount=20, kind="grant", key="welcome")

    class ModelFailed(Exception):
        pass

    with pytest.raises(ModelFailed):
        async with balance.reserve(account, amount=5, reason="generation", key="job-1") as r:
            assert (await balance.get_account(account)).available == 15
            assert r.amount == 5
            raise ModelFailed
    after = await balance.get_account(account)
    assert (after.balance, after.held, after.available) == (20, 0, 20)

    async with balance.reserve(account, amount=5, reason="generation", key="job-2") as r:
        r.settle(3)  # the work turned out cheaper
    assert r.captured is not None and r.captured.transaction.amount == -3
    assert (await balance.get_account(account)).balance == 17

    # The same job again once it was paid for (the app retried it): refused before the work.
    for key, status in (("job-2", "captured"), ("job-1", "released")):
        with pytest.raises(HoldNotActive) as refused:
            async with balance.reserve(account, amount=5, reason="generation", key=key):
                raise AssertionError("work already settled must not run again")
        assert refused.value.hold_status == status
    assert (await balance.get_account(account)).balance == 17

    # The same job twice at once (a double click): one hold, both run, charged once.
    async def job() -> Capture | None:
        async with balance.reserve(account, amount=2, reason="generation", key="job-5") as r:
            await asyncio.sleep(0.05)
        return r.captured

    both = await asyncio.gather(job(), job())
    assert sorted(c.replayed for c in both if c is not None) == [False, True]
    assert len({c.transaction.id for c in both if c is not None}) == 1
    assert (await balance.get_account(account)).balance == 15

    # One of the two fails: it leaves the shared hold to the other, whose success is paid.
    async def attempt(fails: bool) -> Capture | None:
        async with balance.reserve(account, amount=2, reason="generation", key="job-6") as r:
            await asyncio.sleep(0.05 if fails else 0.2)
            if fails:
                raise ModelFailed
        return r.captured

    succeeding = asyncio.create_task(attempt(False))
    await asyncio.sleep(0.05)  # it places the hold first
    with pytest.raises(ModelFailed):
        await attempt(True)
    paid = await succeeding
    assert paid is not None and not paid.replayed and paid.transaction.amount == -2
    assert (await balance.get_account(account)).balance == 13

    async with balance.reserve(account, amount=5, reason="generation", key="job-3") as r:
        r.settle(0)  # nothing to charge after all
    assert r.captured is None and (await balance.get_account(account)).available == 13

    with pytest.raises(InsufficientCredits):
        async with balance.reserve(account, amount=16, reason="generation", key="job-4"):
            raise AssertionError("the work must not start without the credits")
    history = [t async for t in balance.iter_transactions(account)]
    assert [t.amount for t in history] == [-2, -2, -3, 20]


async def test_a_hold_that_expired_is_not_captured(balance: AsyncBalance, account: str) -> None:
    await balance.credit(account, amount=10, kind="grant", key="g")
    placed = await balance.place_hold(account, amount=4, reason="slow", ttl_seconds=1, key="h")
    assert [h.id for h in (await balance.list_holds(account)).holds] == [placed.hold.id]
    await asyncio.sleep(1.2)
    assert (await balance.list_holds(account)).holds == []
    with pytest.raises(HoldNotActive) as late:
        await balance.capture_hold(placed.hold.id)
    assert late.value.hold_status == "expired"


async def test_iterators_walk_every_page(balance: AsyncBalance, account: str) -> None:
    for n in range(7):
        await balance.credit(account, amount=n + 1, kind="grant", key=f"g{n}")
    seen = [t.amount async for t in balance.iter_transactions(account, page_size=3)]
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    grants = [t.amount async for t in balance.iter_transactions(account, kind="grant",
                                                                page_size=2)]
    assert len(grants) == 7
    first = await balance.list_transactions(account, limit=3)
    assert first.next is not None and len(first.transactions) == 3


async def test_a_wrong_key_is_unauthorized_and_not_retried(app: RunningApp) -> None:
    async with AsyncBalance(app.base_url, "sk_wrong", deadline=5) as wrong:
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unauthorized):
            await wrong.get_account("anyone")
        assert asyncio.get_running_loop().time() - started < 1


async def test_the_sync_client_is_the_same_calls(app: RunningApp, account: str) -> None:
    def run() -> tuple[int, bool, int]:
        with Balance(app.base_url, app.service_key) as balance:
            balance.credit(account, amount=9, kind="grant", key="g",
                           expires_at=datetime.now(UTC) + timedelta(days=1))
            first = balance.debit(account, amount=4, reason="x", key="d")
            again = balance.debit(account, amount=4, reason="x", key="d")
            with balance.reserve(account, operation="upscale", key="u") as r:
                pass
            assert r.captured is not None
            return again.account.balance, again.replayed and not first.replayed, len(
                list(balance.iter_transactions(account, page_size=1)))

    assert await asyncio.to_thread(run) == (5, True, 3)  # a replay answers as the first did


async def test_a_spend_cap_is_set_read_and_refuses(
        app: RunningApp, balance: AsyncBalance, account: str) -> None:
    await balance.credit(account, amount=50, kind="grant", key=job())
    await balance.debit(account, amount=4, reason="render", key=job())
    assert (await balance.limits(account)).limits.spend is None
    set_ = await balance.set_limits(account, spend=SpendLimit(amount=10, period="day"),
                                    audit_reason="a trial account, ticket 12")
    spend = set_.limits.spend
    assert spend is not None and (spend.amount, spend.period, spend.used, spend.held) == (
        10, "day", 4, 0)
    with pytest.raises(LimitReached) as capped:
        await balance.debit(account, amount=7, reason="render", key=job())
    assert (capped.value.operation, capped.value.period, capped.value.limit,
            capped.value.used) == (None, "day", 10, 4)
    checked = await balance.check(account, amount=7)
    assert (checked.allowed, checked.error, checked.period) == (False, "limit_reached", "day")
    assert (await balance.get_settings(account)).limits.spend == (
        await balance.limits(account)).limits.spend
    log = await balance.audit_log(account=account, limit=1)
    assert (log.entries[0].action, log.entries[0].detail["reason"]) == (
        "limits", "a trial account, ticket 12")

    def run() -> object:
        with Balance(app.base_url, app.service_key, deadline=10) as sync:
            return sync.set_limits(account, spend=None).limits.spend

    assert await asyncio.to_thread(run) is None
    await balance.debit(account, amount=7, reason="render", key=job())


async def test_the_operator_calls(balance: AsyncBalance, db: asyncpg.Pool,
                                  account: str) -> None:
    pi = f"pi_{uuid.uuid4().hex[:16]}"
    await db.fetchval(
        "SELECT balance_record_unfulfilled('dodo', $1, 'payment.succeeded', $2,"
        " 'metadata account_id is missing', '{}', NULL, 900, 'usd', NULL, 9)", f"msg_{pi}", pi)
    page = await balance.list_payments("needs_review", limit=200)
    listed = next(p for p in page.payments if p.payment_id == pi)
    assert listed.review is not None and listed.credits == 9
    resolved = await balance.credit_review(listed.review.id, account=account, note="ticket 9")
    again = await balance.credit_review(listed.review.id, account=account, note="ticket 9")
    assert resolved.account is not None and resolved.account.balance == 9
    assert again.replayed and not resolved.replayed and again.payment == resolved.payment
    with pytest.raises(IdempotencyConflict):
        await balance.dismiss_review(listed.review.id, note="no")
    credited = await balance.list_payments("credited", account=account)
    assert [p.payment_id for p in credited.payments] == [pi]
    found = await balance.search_accounts(account)
    assert [a.account_id for a in found.accounts] == [account] and found.next is None
    log = await balance.audit_log(account=account)
    assert [(e.action, e.subject, e.detail["note"]) for e in log.entries] == [
        ("review_resolve", str(listed.review.id), "ticket 9")]
    await balance.debit(account, amount=2, reason="render", key=job())
    usage = await balance.usage(account, group_by="day,reason")
    assert [(g.reason, g.amount) for g in usage.groups] == [("render", 2)]
    await balance.set_alerts(account, low_balance=4, audit_reason="quieter for Zoë, ticket 9")
    log = await balance.audit_log(account=account, limit=1)
    assert (log.entries[0].action, log.entries[0].detail["reason"]) == (
        "alerts", "quieter for Zoë, ticket 9")
    settings = await balance.get_settings(account)
    assert (settings.low_balance, settings.threshold, settings.threshold_from,
            settings.auto_top_up) == (4, 4, "account", None)
    events = await balance.list_events(account=account)
    assert all(e.account_id == account for e in events.events)
