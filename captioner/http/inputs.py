"""Turning an HTTP request into a caption request: the image bytes (or a URL) and the options.

Accepted forms (the contract):
- ``multipart/form-data`` with the file field ``image`` (or the field ``url``);
- a raw body with ``Content-Type: image/*`` (``application/octet-stream`` is accepted too, since that is what
  many HTTP clients send for a file; the bytes are sniffed anyway);
- a raw body with no Content-Type, or ``application/x-www-form-urlencoded`` (what ``curl --data-binary`` sends
  without ``-H``), when its magic bytes name an image; otherwise 415, or the form it is;
- JSON ``{"image": "<base64>"}`` (a ``data:`` URL is fine) or ``{"url": "https://..."}``.
``num_captions`` (and, for async jobs, ``callback_url``) may be a query parameter or a form/JSON field.

One small parser per content type; the body is read with a byte cap (``body.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from captioner.config import Settings
from captioner.errors import InvalidImage, InvalidRequest, TooLarge, UnsupportedMediaType
from captioner.http.body import body_limit, read_capped_body
from captioner.http.json_body import decode_base64_off_loop, parse_json
from captioner.model.formats import sniff_format
from captioner.serving.options import parse_num_captions

_RAW_TYPES = ("image/", "application/octet-stream")
# The longest `url` (or `callback_url`) accepted: RFC 9110 asks for URIs of 8000 octets to work. A body may be
# 14 MB of JSON, and a URL that long would be stored with its job and fetched: 422 instead, before either.
MAX_URL_CHARS = 8192


@dataclass(frozen=True)
class CaptionRequest:
    image: bytes | None  # exactly one of image and url is set
    url: str | None
    num_captions: int
    callback_url: str | None = None  # async jobs: POSTed the result when the job ends


# What each parser returns: the image bytes or the URL (at most one is set), and the fields holding options.
Parsed = tuple[bytes | None, Any, Mapping[str, Any]]


async def _parse_form(request: Request, limit: int, max_body_bytes: int) -> Parsed:
    """multipart/form-data or urlencoded: the file field ``image`` or the field ``url``."""
    await read_capped_body(request, limit)
    try:
        form = await request.form(max_files=2, max_fields=20, max_part_size=max_body_bytes)
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
    except HTTPException as exc:  # Starlette turns MultiPartException into a 400 inside an app; ours is 422
        raise InvalidRequest(f"malformed multipart body: {exc.detail}") from exc
    try:
        repeated = [name for name in ("image", "url", "num_captions", "callback_url") if len(form.getlist(name)) > 1]
        if repeated:  # which one would count is a guess; say so instead
            raise InvalidRequest(f"the form field {repeated[0]!r} is given more than once")
        fields = dict(form)
        upload = form.get("image")
        if isinstance(upload, str):
            raise InvalidRequest("the form field 'image' must be a file upload")
        image = await upload.read() if isinstance(upload, UploadFile) else None
    finally:
        await form.close()
    url = fields.get("url")
    if image is not None and "url" in fields:
        raise InvalidRequest("send either the file field 'image' or the field 'url', not both")
    if image is None and not url:
        raise InvalidRequest("multipart requests need a file field 'image' (or a field 'url')")
    return image, url, fields


async def _parse_json(request: Request, limit: int, max_body_bytes: int) -> Parsed:
    """``{"image": "<base64>"}`` or ``{"url": "..."}``, with ``num_captions`` as a JSON integer."""
    payload = await parse_json(await read_capped_body(request, limit))  # orjson: nesting capped, off-loop if big
    if not isinstance(payload, dict):
        raise InvalidRequest('the JSON body must be an object such as {"image": "<base64>"}')
    if "image" in payload and "url" in payload:
        raise InvalidRequest('send either "image" or "url", not both')
    count = payload.get("num_captions", 1)
    if not isinstance(count, int) or isinstance(count, bool):
        # JSON has numbers: "2" is a client bug worth reporting, unlike in a query string or form.
        shown = repr(count) if len(repr(count)) <= 40 else f"a {type(count).__name__}"  # never echo a huge value
        raise InvalidRequest(f"num_captions must be a JSON integer, got {shown}")
    if "image" in payload:
        return await decode_base64_off_loop(payload["image"]), None, payload
    if payload.get("url") is None:
        raise InvalidRequest('the JSON body needs "image" (base64) or "url"')
    return None, payload["url"], payload


async def _parse_raw(request: Request, limit: int, max_body_bytes: int) -> Parsed:
    """The body is the image itself (its bytes are sniffed when decoded)."""
    return await read_capped_body(request, limit), None, {}


Parser = Callable[[Request, int, int], Awaitable[Parsed]]


def _sniffed(otherwise: Parser | None) -> Parser:
    """A body whose magic bytes name an image is that image, whatever its Content-Type; else ``otherwise``."""

    async def parse(request: Request, limit: int, max_body_bytes: int) -> Parsed:
        body = await read_capped_body(request, limit)  # kept on the request: ``otherwise`` reads it again
        if sniff_format(body[:8192]) is not None:
            return body, None, {}
        if otherwise is None:
            raise _unsupported("")
        return await otherwise(request, limit, max_body_bytes)

    return parse


_PARSERS: tuple[tuple[tuple[str, ...], Parser], ...] = (
    (("multipart/form-data",), _parse_form),
    (("application/x-www-form-urlencoded",), _sniffed(_parse_form)),
    (("application/json",), _parse_json),
    (_RAW_TYPES, _parse_raw),
)
_NO_CONTENT_TYPE = _sniffed(None)


def _unsupported(content_type: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"unsupported Content-Type {content_type or 'none'!r}: send multipart/form-data (field 'image'), "
        'a raw image/* body, or JSON {"image": "<base64>"}'
    )


async def parse_caption_request(
    request: Request, *, max_body_bytes: int, default_num_captions: int, max_num_captions: int
) -> CaptionRequest:
    content_type = request.headers.get("content-type", "").strip().lower()
    if content_type:
        parser = next((parse for types, parse in _PARSERS if content_type.startswith(types)), None)
        if parser is None:
            raise _unsupported(content_type)
    else:
        parser = _NO_CONTENT_TYPE
    image, url, fields = await parser(request, body_limit(content_type, max_body_bytes), max_body_bytes)
    if image is not None and len(image) > max_body_bytes:
        raise TooLarge(f"the image is over the limit of {max_body_bytes} bytes")
    if image is not None and not image:
        raise InvalidImage("the image is empty")
    if url is not None and not isinstance(url, str):
        raise InvalidRequest("'url' must be a string")
    if url is not None and len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"'url' is longer than {MAX_URL_CHARS} characters")
    return CaptionRequest(
        image=image,
        url=url or None,
        num_captions=_num_captions(request, fields, default_num_captions, max_num_captions),
        callback_url=_callback_url(request, fields),
    )


def _callback_url(request: Request, fields: Mapping[str, Any]) -> str | None:
    """A query parameter, form field or JSON field; its policy is checked where jobs are accepted."""
    values = request.query_params.getlist("callback_url")
    if len(values) > 1:
        raise InvalidRequest("the query parameter 'callback_url' is given more than once")
    value = values[0] if values else fields.get("callback_url")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise InvalidRequest(f"'callback_url' must be an http(s) URL of at most {MAX_URL_CHARS} characters")
    return value


def _num_captions(request: Request, fields: Mapping[str, Any], default: int, maximum: int) -> int:
    """The query parameter wins over a body field; both are checked."""
    if "num_captions" in fields:
        # Checked even when the query parameter wins: a malformed field is an error, not something to ignore.
        parse_num_captions(fields["num_captions"], default, maximum)
    if not request.scope.get("query_string"):  # the common case: nothing to parse
        return parse_num_captions(fields.get("num_captions"), default, maximum)
    if len(request.query_params.getlist("num_captions")) > 1:
        raise InvalidRequest("the query parameter 'num_captions' is given more than once")
    return parse_num_captions(request.query_params.get("num_captions", fields.get("num_captions")), default, maximum)


async def parse_api_request(request: Request, settings: Settings) -> CaptionRequest:
    """``parse_caption_request`` with the server's limits: ``POST /api/v1/caption``, sync or async."""
    return await parse_caption_request(
        request,
        max_body_bytes=settings.limits.max_body_bytes,
        default_num_captions=settings.generation.num_captions,
        max_num_captions=settings.generation.max_num_captions,
    )
