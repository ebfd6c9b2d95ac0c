"""JSON bodies and base64 images, parsed without blocking the event loop and without a 500 for any input.

- JSON is parsed by orjson: strict UTF-8, nesting capped (orjson refuses more than 1024 levels with a
  ``JSONDecodeError`` where ``json.loads`` raised ``RecursionError``), integers capped at 64 bits.
- A body (or a base64 string) over ``OFF_LOOP_BYTES`` is parsed on a worker thread: a 13 MB JSON body takes
  tens of milliseconds, which on the event loop would stall every other connection.
- base64 whitespace (line breaks every 76 characters, as MIME writes it) is stripped on bytes with
  ``bytes.translate``: one pass in C. ``"".join(text.split())`` built one string object per line.
- base64 is read strictly (RFC 4648 section 4: whole quanta, ``=`` padding only at the end, only as much as the
  last quantum needs), so that ``BASE64_PATTERN``, which the OpenAPI document gives every base64 field, says
  exactly which strings are accepted. Python's own ``b64decode(validate=True)`` also takes excess padding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

import orjson

from captioner.errors import InvalidRequest

OFF_LOOP_BYTES = 256 * 1024
_WHITESPACE = b" \t\r\n\f\v"
# After the whitespace is gone: whole 4-character quanta, the last one padded with "=" where it is short.
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _base64_pattern() -> str:
    """The JSON Schema (ECMA-262) pattern of the strings ``decode_base64`` turns into a non-empty image.

    An optional ``data:<anything but a comma>,`` prefix, then whole quanta with the server's whitespace
    (``\\t``..``\\r`` and space) anywhere, the last quantum padded. Written out character by character
    because a pattern can't count the characters that are left once the whitespace is removed.
    """
    space, char = "[\\t-\\r ]", "[A-Za-z0-9+/]"
    quantum = f"(?:{char}{space}*){{4}}"
    last = f"(?:{quantum}|(?:{char}{space}*){{2}}={space}*={space}*|(?:{char}{space}*){{3}}={space}*)"
    return f"^(?:data:[^,]*,)?{space}*(?:{quantum})*{last}$"


BASE64_PATTERN = _base64_pattern()
# An 8x8 orange PNG: the documented example of every base64 image field.
EXAMPLE_IMAGE_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8UaHBgA0wMeAAg1MCAB4nAXgllso1AAAAAElFTkSuQmCC"
)


async def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; ``InvalidRequest`` (422) for anything that is not valid JSON."""
    try:
        if len(body) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(orjson.loads, body)
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("the body is not valid JSON (or nests deeper than 1024 levels)") from exc


def decode_base64(text: Any, field: str = "image") -> bytes:
    """Bytes of a base64 string (or a ``data:`` URL); ``InvalidRequest`` for anything else."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{field!r} must be a base64 string")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        raw = text.encode("ascii").translate(None, _WHITESPACE)  # base64 is ASCII: anything else is not base64
        if len(raw) % 4 or not _BASE64.fullmatch(raw):
            raise ValueError("not whole, properly padded base64 quanta")
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{field!r} is not valid base64") from exc


async def decode_base64_off_loop(text: Any, field: str = "image") -> bytes:
    """``decode_base64``, on a worker thread when the string is big."""
    if isinstance(text, str) and len(text) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(decode_base64, text, field)
    return decode_base64(text, field)
