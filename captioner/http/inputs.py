"""Turning an HTTP request into a caption request: the image bytes (or a URL) and the options.

Accepted forms (the contract):
- ``multipart/form-data`` with the file field ``image`` (or the field ``url``);
- a raw body with ``Content-Type: image/*`` (``application/octet-stream`` is accepted too, since that is what
  many HTTP clients send for a file; the bytes are sniffed anyway);
- a raw body with no Content-Type, or ``application/x-www-form-urlencoded`` (what ``curl --data-binary`` sends
  without ``-H``), when its magic bytes name an image; otherwise 415 (no Content-Type), or the form it is when it
  names a field below (``url=...``), or else 400 ``invalid_image`` (bytes that are no image, as for octet-stream);
- JSON ``{"image": "<base64>"}`` (a ``data:`` URL is fine) or ``{"url": "https://..."}``.
``num_captions`` (and, for async jobs, ``callback_url``) may be a query parameter or a form/JSON field.

Strict, so that the OpenAPI document (``openapi.py``) can say exactly what is accepted: an unknown form or JSON
field, a field given twice, or ``num_captions`` given empty is a 422 ``invalid_request`` rather than ignored.

One small parser per content type; the body is read with a byte cap (``body.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from captioner.config import Settings
from captioner.errors import InvalidImage, InvalidRequest, TooLarge, UnsupportedMediaType, UrlNotAllowed
from captioner.http.body import body_limit, read_capped_body
from captioner.http.json_body import decode_base64_off_loop, parse_json
from captioner.model.formats import sniff_format
from captioner.outbound.callbacks import validate_callback_url
from captioner.serving.options import parse_num_captions

_RAW_TYPES = ("image/", "application/octet-stream")
# The fields a form or a JSON body may have (the image is "image", a file part in a form, base64 in JSON).
FIELDS = ("image", "url", "num_captions", "callback_url")
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
    """multipart/form-data: the file field ``image`` or the field ``url``."""
    return await _form(request, limit, max_body_bytes, raw_unless_fields=False)


async def _parse_urlencoded(request: Request, limit: int, max_body_bytes: int) -> Parsed:
    """An HTML form's ``url=...`` (an image sent so was sniffed before this: a urlencoded form carries no file)."""
    return await _form(request, limit, max_body_bytes, raw_unless_fields=True)


async def _form(request: Request, limit: int, max_body_bytes: int, *, raw_unless_fields: bool) -> Parsed:
    await read_capped_body(request, limit)
    try:
        form = await request.form(max_files=2, max_fields=20, max_part_size=max_body_bytes)
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
    except HTTPException as exc:  # Starlette turns MultiPartException into a 400 inside an app; ours is 422
        raise InvalidRequest(f"malformed multipart body: {exc.detail}") from exc
    try:
        if raw_unless_fields and not set(form.keys()) & set(FIELDS):
            # No field of ours: a raw body that is no image, sent as curl --data-binary sends a file.
            raise InvalidImage("the body is not an image (its first bytes name no image format), nor a form with 'url'")
        _refuse_unknown(form.keys(), "form field")
        repeated = [name for name in FIELDS if len(form.getlist(name)) > 1]
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
        raise InvalidRequest("the form needs a file field 'image' (or a field 'url')")
    return image, url, fields


async def _parse_json(request: Request, limit: int, max_body_bytes: int) -> Parsed:
    """``{"image": "<base64>"}`` or ``{"url": "..."}``, with ``num_captions`` as a JSON integer."""
    payload = await parse_json(await read_capped_body(request, limit))  # orjson: nesting capped, off-loop if big
    if not isinstance(payload, dict):
        raise InvalidRequest('the JSON body must be an object such as {"image": "<base64>"}')
    _refuse_unknown(payload, "field")
    if "image" in payload and "url" in payload:
        raise InvalidRequest('send either "image" or "url", not both')
    if "num_captions" in payload:
        payload = {**payload, "num_captions": _json_integer(payload["num_captions"])}
    if "image" in payload:
        return await decode_base64_off_loop(payload["image"]), None, payload
    if "url" not in payload:
        raise InvalidRequest('the JSON body needs "image" (base64) or "url"')
    if not isinstance(payload["url"], str) or not payload["url"]:
        raise InvalidRequest("'url' must be an http(s) URL")
    return None, payload["url"], payload


def _json_integer(value: Any) -> int:
    """A JSON number with no fraction (``2`` or ``2.0``: JSON Schema's integer); a string or a bool is not one."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        # JSON has numbers: "2" is a client bug worth reporting, unlike in a query string or form.
        raise InvalidRequest(f"num_captions must be a JSON integer, got {_shown(value)}")
    return value


def _refuse_unknown(names: Iterable[str], what: str) -> None:
    unknown = sorted(set(names) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown {what} {_shown(unknown[0])}; the fields are {', '.join(FIELDS)}")


def _shown(value: Any) -> str:
    """``value`` for an error message; never a huge one echoed back."""
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__} of {len(text)} characters"


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
    (("application/x-www-form-urlencoded",), _sniffed(_parse_urlencoded)),
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
    validate_callback_url(value)  # 422 for a host no callback could reach
    return value


def _num_captions(request: Request, fields: Mapping[str, Any], default: int, maximum: int) -> int:
    """The query parameter wins over a body field; both are checked. Given empty is an error, not the default."""
    values = [fields["num_captions"]] if "num_captions" in fields else []
    if request.scope.get("query_string"):  # the common case has none: nothing to parse
        query = request.query_params.getlist("num_captions")
        if len(query) > 1:
            raise InvalidRequest("the query parameter 'num_captions' is given more than once")
        values = query + values
    # Each is checked even when the query parameter wins: a malformed field is an error, not something to ignore.
    numbers = [_one_num_captions(value, default, maximum) for value in values]
    return numbers[0] if numbers else default


def _one_num_captions(value: Any, default: int, maximum: int) -> int:
    if value == "":  # "?num_captions=" says nothing valid; leaving it out gives the default
        raise InvalidRequest(f"num_captions must be an integer between 1 and {maximum}, got ''")
    return parse_num_captions(value, default, maximum)


async def parse_api_request(request: Request, settings: Settings) -> CaptionRequest:
    """``parse_caption_request`` with the server's limits: ``POST /api/v1/caption``, sync or async."""
    parsed = await parse_caption_request(
        request,
        max_body_bytes=settings.limits.max_body_bytes,
        default_num_captions=settings.generation.num_captions,
        max_num_captions=settings.generation.max_num_captions,
    )
    if parsed.url is not None and not settings.url_input.enabled:
        # Refused now, sync or async: a job would be accepted (202) only to fail.
        raise UrlNotAllowed("fetching images by URL is disabled on this server")
    return parsed
