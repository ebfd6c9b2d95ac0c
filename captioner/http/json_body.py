"""JSON bodies and base64 images, parsed without blocking the event loop and without a 500 for any input.

- JSON is parsed by orjson: strict UTF-8, nesting capped (orjson refuses more than 1024 levels with a
  ``JSONDecodeError`` where ``json.loads`` raised ``RecursionError``), integers capped at 64 bits.
- A body (or a base64 string) over ``OFF_LOOP_BYTES`` is parsed on a worker thread: a 13 MB JSON body takes
  tens of milliseconds, which on the event loop would stall every other connection.
- base64 whitespace (line breaks every 76 characters, as MIME writes it) is stripped on bytes with
  ``bytes.translate``: one pass in C. ``"".join(text.split())`` built one string object per line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import orjson

from captioner.errors import InvalidRequest

OFF_LOOP_BYTES = 256 * 1024
_WHITESPACE = b" \t\r\n\f\v"


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
        raw = text.encode("ascii")  # base64 is ASCII: anything else is not base64
        return base64.b64decode(raw.translate(None, _WHITESPACE), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{field!r} is not valid base64") from exc


async def decode_base64_off_loop(text: Any, field: str = "image") -> bytes:
    """``decode_base64``, on a worker thread when the string is big."""
    if isinstance(text, str) and len(text) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(decode_base64, text, field)
    return decode_base64(text, field)
