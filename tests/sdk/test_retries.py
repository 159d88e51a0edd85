"""What the SDK does when the network or the server fails: the same request again, with the
same key, until the deadline; then OutcomeUnknown or Unavailable, never a guess.

The cut connection runs against the real server through a proxy that delivers the request
and then drops the connection before the answer; the rest uses httpx's MockTransport (the
transport extension point), which records what each attempt sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from balance_client import (
    AsyncBalance,
    Balance,
    BalanceError,
    InsufficientCredits,
    LimitReached,
    OutcomeUnknown,
    RateLimited,
    Unavailable,
)
from tests.conftest import RunningApp


@contextlib.asynccontextmanager
async def cutting_proxy(target_port: int, cuts: int) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP proxy to 127.0.0.1:target_port. For the first `cuts` connections it sends the
    request on, waits for the server's whole answer, and closes the client's connection
    without passing the answer: the server committed, the client saw a reset."""
    seen: list[bytes] = []
    left = [cuts]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                seen.append(request)
                up_writer.write(request)
                await up_writer.drain()
                answer = await up_reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in answer.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                answer += await up_reader.readexactly(length)
                if left[0] > 0:
                    left[0] -= 1
                    writer.transport.abort()  # a reset, as a dying load balancer sends
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cut_connection_is_retried_with_the_same_key_and_charges_once(
        app: RunningApp, account: str) -> None:
    async with (AsyncBalance(app.base_url, app.service_key) as direct,
                cutting_proxy(app.settings.port, cuts=2) as (port, seen),
                AsyncBalance(f"http://127.0.0.1:{port}", app.service_key, deadline=10) as balance):
        await direct.credit(account, amount=10, kind="grant", key="g")
        result = await balance.debit(account, amount=4, reason="generation", key="job-7")
        usage = [t async for t in direct.iter_transactions(account, kind="usage")]
    assert len(seen) == 3 and seen[0].split(b"\r\n\r\n")[1] == seen[2].split(b"\r\n\r\n")[1]
    assert result.replayed and result.account.balance == 6
    assert [t.amount for t in usage] == [-4]  # exactly one transaction


def _answering(*answers: httpx.Response | Exception,
               sent: list[httpx.Request]) -> httpx.MockTransport:
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler)


def _error(status: int, code: str, **details: object) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": code, **details})


OK = httpx.Response(200, json={
    "transaction": {"id": 1, "account_id": "a", "kind": "usage", "amount": -1,
                    "balance_after": 0, "version": 2, "created_at": "2026-12-07T00:00:00Z"},
    "account": {"account_id": "a", "balance": 0, "held": 0, "available": 0, "version": 2}},
    headers={"idempotent-replayed": "true"})


async def test_a_503_and_a_reset_are_retried_with_the_same_bytes() -> None:
    sent: list[httpx.Request] = []
    transport = _answering(_error(503, "outcome_unknown"), httpx.ReadError("reset"),
                           _error(503, "unavailable"), OK, sent=sent)
    async with AsyncBalance("http://x", "sk", transport=transport) as balance:
        result = await balance.debit("a", amount=1, reason="r", key="k1")
    assert result.replayed and len(sent) == 4
    assert len({r.content for r in sent}) == 1 and b'"idempotency_key":"k1"' in sent[0].content


@pytest.mark.parametrize(("failure", "expected"), [
    (_error(503, "outcome_unknown"), OutcomeUnknown),  # it may have committed
    (httpx.ReadTimeout("slow"), OutcomeUnknown),  # sent, no answer in time
    (httpx.ConnectError("refused"), Unavailable),  # never reached the server
    (_error(503, "unavailable"), Unavailable),  # the server says nothing was written
])
async def test_the_deadline_ends_in_outcome_unknown_only_when_it_may_have_committed(
        failure: httpx.Response | Exception, expected: type[BalanceError]) -> None:
    sent: list[httpx.Request] = []
    transport = _answering(failure, sent=sent)
    async with AsyncBalance("http://x", "sk", deadline=0.6, transport=transport) as balance:
        started = asyncio.get_running_loop().time()
        with pytest.raises(expected) as ended:
            await balance.debit("a", amount=1, reason="r", key="k2")
        assert type(ended.value) is expected
        assert asyncio.get_running_loop().time() - started < 1.5 and len(sent) >= 2
        if isinstance(ended.value, OutcomeUnknown):
            assert ended.value.key == "k2"
        # A read has no outcome to lose: it ends Unavailable either way.
        with pytest.raises(Unavailable):
            await balance.get_account("a")


def test_errors_are_typed_with_the_contracts_details_and_not_retried() -> None:
    sent: list[httpx.Request] = []
    answers = [
        _error(402, "limit_reached", operation="video", limit=50, used=50,
               resets_at="2026-12-31T00:00:00.000000Z"),
        _error(429, "rate_limited", retry_after=7),
        _error(402, "insufficient_credits", required=9, available=2),
        _error(500, "internal_error"),
        httpx.Response(502, text="<html>bad gateway</html>"),
    ]
    with Balance("http://x", "sk", transport=_answering(*answers, sent=sent)) as balance:
        with pytest.raises(LimitReached) as limit:
            balance.charge("a", operation="video", key="k")
        assert (limit.value.limit, limit.value.used, limit.value.operation) == (50, 50, "video")
        assert limit.value.resets_at is not None and limit.value.resets_at.day == 31
        with pytest.raises(RateLimited) as limited:
            balance.debit("a", amount=1, reason="r", key="k")
        assert limited.value.retry_after == 7
        with pytest.raises(InsufficientCredits) as poor:
            balance.debit("a", amount=9, reason="r", key="k")
        assert (poor.value.required, poor.value.available) == (9, 2)
        with pytest.raises(BalanceError) as failed:
            balance.debit("a", amount=1, reason="r", key="k")
        assert failed.value.code == "internal_error"
        with pytest.raises(BalanceError) as gateway:
            balance.get_account("a")
        assert gateway.value.status == 502 and "bad gateway" in gateway.value.message
    assert len(sent) == 5  # one attempt each
