"""A ``url`` (or ``callback_url``) is capped in length where the request is parsed, before any job stores it:
a 14 MB JSON body is within the body limit, and its URL would otherwise sit in the job record and be fetched.
The parser is driven with an ASGI scope and a receive function: no socket, no server."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import pytest
from starlette.requests import Request

from captioner.errors import InvalidRequest
from captioner.http.inputs import MAX_URL_CHARS, CaptionRequest, parse_caption_request

BODY_LIMIT = 10 * 1024 * 1024  # limits.max_body_bytes' default: JSON may be 4/3 of it plus an envelope
FOURTEEN_MB = 14 * 1000 * 1000 - 100


def parse(body: bytes, content_type: str, query: str = "") -> CaptionRequest:
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive() -> dict[str, object]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {
        "type": "http", "method": "POST", "path": "/api/v1/caption", "query_string": query.encode(),
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip

    async def run() -> CaptionRequest:
        return await parse_caption_request(
            Request(scope, receive), max_body_bytes=BODY_LIMIT, default_num_captions=1, max_num_captions=3
        )

    return asyncio.run(run())


def long_url(length: int) -> str:
    prefix = "https://example.com/"
    return prefix + "a" * (length - len(prefix))


def test_a_14_mb_json_url_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse(json.dumps({"url": long_url(FOURTEEN_MB)}).encode(), "application/json")
    assert refused.value.status_code == 422 and str(MAX_URL_CHARS) in refused.value.message
    assert len(refused.value.message) < 200  # the URL is not echoed


def test_a_long_form_url_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        parse(urlencode({"url": long_url(MAX_URL_CHARS + 1)}).encode(), "application/x-www-form-urlencoded")


def test_a_url_up_to_the_cap_is_accepted() -> None:
    url = long_url(MAX_URL_CHARS)
    assert parse(json.dumps({"url": url}).encode(), "application/json").url == url
    assert parse(urlencode({"url": url}).encode(), "application/x-www-form-urlencoded").url == url


def test_a_long_callback_url_is_an_invalid_request() -> None:
    body = json.dumps({"url": "https://example.com/cat.jpg", "callback_url": long_url(MAX_URL_CHARS + 1)})
    with pytest.raises(InvalidRequest):
        parse(body.encode(), "application/json", "mode=async")
    ok = json.dumps({"url": "https://example.com/cat.jpg", "callback_url": long_url(MAX_URL_CHARS)})
    assert parse(ok.encode(), "application/json", "mode=async").callback_url == long_url(MAX_URL_CHARS)
