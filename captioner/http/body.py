"""Reading a request body with a byte cap and a deadline.

A ``Content-Length`` over the cap is refused before anything is read, and a streamed body is cut off the moment
it passes the cap. ``BodyDeadline`` bounds the time: a body that has not fully arrived ``limits.body_timeout_s``
after its request's headers is answered 408 ``timeout`` and the connection is closed, so a client trickling a
body (slowloris) holds neither a socket nor an admission ticket for longer than that.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner.errors import BodyTimeout, TooLarge

# Room for multipart boundaries and headers, or JSON punctuation, on top of the image itself.
_ENVELOPE_SLACK = 64 * 1024


def body_limit(content_type: str, max_body_bytes: int) -> int:
    """The most bytes a body of this type may have, given the image limit (base64 grows data by 4/3)."""
    if content_type.startswith("application/json"):
        return max_body_bytes * 4 // 3 + _ENVELOPE_SLACK
    if content_type.startswith(("multipart/", "application/x-www-form-urlencoded")):
        return max_body_bytes + _ENVELOPE_SLACK
    return max_body_bytes


def check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {int(declared)} bytes; the limit is {limit}")


async def read_capped_body(request: Request, limit: int) -> bytes:
    """Read the whole body, failing with 413 the moment it passes ``limit`` bytes."""
    check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette's form()/json() read request._body when present; the stream itself is spent now.
    request._body = body
    return body


class BodyDeadline:
    """ASGI middleware: every ``receive`` of a request's body must be done by its deadline, else ``BodyTimeout``.

    It wraps ``receive`` rather than one reader, so every endpoint and body parser gets the same deadline.
    Once the last body message has arrived, ``receive`` is passed through untouched: from then on it only
    reports a disconnect, which routes may wait for as long as they like.
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = False

        async def receive_by_deadline() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, receive_by_deadline, send)
