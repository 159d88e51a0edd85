"""Every request's id, and the one answer to a failure nothing else caught.

The outermost middleware: it keeps the caller's `X-Request-Id` (printable ASCII, at most
128 characters) or makes one, puts it in `server.logs.REQUEST_ID` for the request's log
lines, and sends it back on every response. An exception no handler answered becomes the
contract's `500 internal_error`, with the id, and one log line with its traceback.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import errors, logs
from server.messages import encoder

log = logging.getLogger("balance.api")

HEADER = b"x-request-id"


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-Id when it is fit to log and echo, else a new one."""
    for name, value in headers:
        if name == HEADER:
            return logs.request_id(value.decode("latin-1"))
    return logs.request_id(None)


class RequestIds:
    """X-Request-Id on every HTTP response; a 500 in the error format for what escaped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope["headers"])
        header = (HEADER, rid.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # A new list: a response object's own headers may be sent again.
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = logs.REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Path without its query (it may carry a token); no header, no body.
            log.error("unhandled error answering %s %s", scope["method"], scope["path"],
                      exc_info=exc)
            if started:
                return  # too late for an answer: uvicorn cuts the connection
            problem = errors.internal_error()
            body = encoder.encode({**problem.body(), "request_id": rid})
            await send({"type": "http.response.start", "status": problem.status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                header,
            ]})
            await send({"type": "http.response.body", "body": body})
        finally:
            logs.REQUEST_ID.reset(token)
