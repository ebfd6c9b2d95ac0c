"""Turning an HTTP request into a caption request: the image bytes (or a URL) and the options.

Accepted forms (the contract):
- ``multipart/form-data`` with the file field ``image`` (or the field ``url``);
- a raw body with ``Content-Type: image/*`` (``application/octet-stream`` is accepted too, since that is what
  many HTTP clients send for a file; the bytes are sniffed anyway);
- JSON ``{"image": "<base64>"}`` (a ``data:`` URL is fine) or ``{"url": "https://..."}``.
``num_captions`` may be a query parameter or a form/JSON field.

The body is read with a byte cap: a ``Content-Length`` over the cap is refused before reading anything, and a
streamed body is cut off as soon as it passes the cap.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from .errors import InvalidImage, InvalidRequest, TooLarge, UnsupportedMediaType

# Room for multipart boundaries and headers, or JSON punctuation, on top of the image itself.
_ENVELOPE_SLACK = 64 * 1024
_RAW_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class CaptionRequest:
    image: bytes | None  # exactly one of image and url is set
    url: str | None
    num_captions: int


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


def parse_num_captions(value: Any, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequest("num_captions must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        raise InvalidRequest(f"num_captions must be an integer between 1 and {maximum}, got {value!r}")
    if not 1 <= number <= maximum:
        raise InvalidRequest(f"num_captions must be between 1 and {maximum}, got {number}")
    return number


def _decode_base64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidRequest("'image' must be a base64 string")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("'image' is not valid base64") from exc


async def parse_caption_request(
    request: Request, *, max_body_bytes: int, default_num_captions: int, max_num_captions: int
) -> CaptionRequest:
    content_type = request.headers.get("content-type", "").lower()
    limit = body_limit(content_type, max_body_bytes)
    fields: dict[str, Any]
    image: bytes | None = None
    url: Any = None
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        await read_capped_body(request, limit)
        try:
            form = await request.form(max_files=2, max_fields=20, max_part_size=max_body_bytes)
        except MultiPartException as exc:
            raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
        except HTTPException as exc:  # Starlette turns MultiPartException into a 400 inside an app; ours is 422
            raise InvalidRequest(f"malformed multipart body: {exc.detail}") from exc
        repeated = [name for name in ("image", "url", "num_captions") if len(form.getlist(name)) > 1]
        if repeated:  # which one would count is a guess; say so instead
            await form.close()
            raise InvalidRequest(f"the form field {repeated[0]!r} is given more than once")
        fields = dict(form)
        upload = form.get("image")
        if isinstance(upload, UploadFile):
            image = await upload.read()
        elif isinstance(upload, str):
            raise InvalidRequest("the form field 'image' must be a file upload")
        url = fields.get("url")
        await form.close()
        if image is not None and "url" in fields:
            raise InvalidRequest("send either the file field 'image' or the field 'url', not both")
        if image is None and not url:
            raise InvalidRequest("multipart requests need a file field 'image' (or a field 'url')")
    elif content_type.startswith("application/json"):
        body = await read_capped_body(request, limit)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest("the body is not valid JSON") from exc
        if not isinstance(payload, dict):
            raise InvalidRequest('the JSON body must be an object such as {"image": "<base64>"}')
        fields = payload
        if "image" in payload and "url" in payload:
            raise InvalidRequest('send either "image" or "url", not both')
        count = payload.get("num_captions", 1)
        if not isinstance(count, int) or isinstance(count, bool):
            # JSON has numbers: "2" is a client bug worth reporting, unlike in a query string or form.
            raise InvalidRequest(f"num_captions must be a JSON integer, got {count!r}")
        if "image" in payload:
            image = _decode_base64(payload["image"])
        else:
            url = payload.get("url")
            if url is None:
                raise InvalidRequest('the JSON body needs "image" (base64) or "url"')
    elif content_type.startswith(_RAW_TYPES):
        image = await read_capped_body(request, limit)
        fields = {}
    else:
        shown = content_type or "none"
        raise UnsupportedMediaType(
            f"unsupported Content-Type {shown!r}: send multipart/form-data (field 'image'), "
            'a raw image/* body, or JSON {"image": "<base64>"}'
        )
    if image is not None and len(image) > max_body_bytes:
        raise TooLarge(f"the image is over the limit of {max_body_bytes} bytes")
    if image is not None and not image:
        raise InvalidImage("the image is empty")
    if url is not None and not isinstance(url, str):
        raise InvalidRequest("'url' must be a string")
    if "num_captions" in fields:
        # Checked even when the query parameter wins: a malformed field is an error, not something to ignore.
        parse_num_captions(fields["num_captions"], default_num_captions, max_num_captions)
    if len(request.query_params.getlist("num_captions")) > 1:
        raise InvalidRequest("the query parameter 'num_captions' is given more than once")
    raw_count = request.query_params.get("num_captions", fields.get("num_captions"))
    num_captions = parse_num_captions(raw_count, default_num_captions, max_num_captions)
    return CaptionRequest(image=image, url=url or None, num_captions=num_captions)
