"""Reading a request body with a byte cap: a ``Content-Length`` over the cap is refused before anything is read,
and a streamed body is cut off the moment it passes the cap."""

from __future__ import annotations

from starlette.requests import Request

from captioner.errors import TooLarge

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
