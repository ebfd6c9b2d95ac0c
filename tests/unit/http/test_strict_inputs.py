"""Caption requests are parsed strictly, so that the OpenAPI document can say exactly what is accepted.

Each case here is one the schemathesis fuzzer found, or could only find by luck: a request the document forbids
that was accepted, or one it allows that was refused. Pure: a Starlette ``Request`` over an in-memory body.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from captioner.config import load_settings
from captioner.errors import CaptionerError, InvalidImage, InvalidRequest, UrlNotAllowed
from captioner.http.inputs import CaptionRequest, parse_api_request, parse_caption_request
from captioner.http.jobs_api import IDEMPOTENCY_KEY_PATTERN, idempotency_key, wants_async
from tests.support.images import photo

PNG = photo(3)
B64 = base64.b64encode(PNG).decode()


def request(
    body: bytes = b"", content_type: str | None = None, query: str = "", headers: dict[str, str] | None = None
) -> Request:
    raw = [(b"content-type", content_type.encode())] if content_type is not None else []
    raw += [(name.lower().encode(), value.encode("latin-1")) for name, value in (headers or {}).items()]
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/api/v1/caption", "headers": raw}
    return Request({**scope, "query_string": query.encode()}, receive)


def built(**kwargs: Any) -> Request:
    """A request as httpx encodes it (multipart boundaries, urlencoded forms, JSON)."""
    sent = httpx.Request("POST", "http://testserver/api/v1/caption", **kwargs)
    return request(sent.read(), sent.headers.get("content-type"), sent.url.query.decode())


def parse(req: Request) -> CaptionRequest:
    return asyncio.run(parse_caption_request(req, max_body_bytes=1 << 20, default_num_captions=1, max_num_captions=3))


def refused(req: Request, error: type[CaptionerError] = InvalidRequest) -> str:
    with pytest.raises(error) as caught:
        parse(req)
    return caught.value.message


# -- JSON


def test_json_unknown_fields_are_refused_by_name() -> None:
    assert "'extra'" in refused(built(json={"image": B64, "extra": 1}))
    # An unknown field in place of the required one: answered 200 before (the image was found elsewhere).
    assert "'imagee'" in refused(built(json={"imagee": B64}))
    assert "a str of" in refused(built(json={"image": B64, "x" * 1000: 1}))  # a huge name is never echoed


def test_json_num_captions_is_json_schemas_integer() -> None:
    # JSON has one number type: 2.0 is the integer 2 (as JSON Schema's "integer" says); a fraction or a string isn't.
    assert parse(built(json={"image": B64, "num_captions": 2.0})).num_captions == 2
    assert parse(built(json={"image": B64, "num_captions": 3})).num_captions == 3
    for bad in (2.5, "2", True, None, 1e300):
        refused(built(json={"image": B64, "num_captions": bad}))


@pytest.mark.parametrize("url", ["", 5, None, ["https://a.b/c.png"]])
def test_json_url_must_be_a_non_empty_string(url: Any) -> None:
    # {"url": ""} passed as "no image and no url": a 500 in the caption route, a doomed job with mode=async.
    refused(built(json={"url": url}))


def test_json_url_is_parsed() -> None:
    assert parse(built(json={"url": "https://a.b/c.png", "num_captions": 2})).url == "https://a.b/c.png"


# -- forms


def test_multipart_unknown_fields_are_refused_by_name() -> None:
    files = {"image": ("a.png", PNG, "image/png")}
    assert "'colour'" in refused(built(files=files, data={"colour": "red"}))
    assert "'picture'" in refused(built(files={"picture": ("a.png", PNG, "image/png")}))


def test_multipart_without_image_or_url_is_refused() -> None:
    # The fuzzer's report: such a body answered 202 with mode=async. It is a 422 whatever the mode.
    options_only = httpx.Request("POST", "http://testserver/", files={"num_captions": (None, b"2")})
    assert "'image'" in refused(request(options_only.read(), options_only.headers["content-type"]))
    empty_url = httpx.Request("POST", "http://testserver/", files={"url": (None, b"")})
    assert "'image'" in refused(request(empty_url.read(), empty_url.headers["content-type"]))


def test_urlencoded_bodies_are_an_image_a_url_form_or_no_image() -> None:
    form = "application/x-www-form-urlencoded"
    assert parse(request(PNG, form)).image == PNG  # curl --data-binary @cat.png
    assert parse(request(b"url=https%3A%2F%2Fa.b%2Fc.png&num_captions=2", form)).url == "https://a.b/c.png"
    # Bytes that are no image and name none of the fields: not an image, as for application/octet-stream.
    refused(request(b"name=cat&size=2", form), InvalidImage)
    refused(request(bytes(range(256)), form), InvalidImage)
    # A form naming a field is checked as one.
    assert "file upload" in refused(request(b"image=abc", form))
    assert "'name'" in refused(request(b"url=https%3A%2F%2Fa.b%2Fc.png&name=cat", form))


# -- num_captions


@pytest.mark.parametrize("query", ["num_captions=", "num_captions=2&num_captions=2", "num_captions=%C2%B2"])
def test_bad_query_num_captions_is_refused(query: str) -> None:
    refused(request(PNG, "image/png", query))


def test_empty_num_captions_is_refused_not_defaulted() -> None:
    # Given but empty says nothing valid; leaving it out gives the default.
    refused(built(files={"image": ("a.png", PNG)}, data={"num_captions": ""}))
    assert parse(request(PNG, "image/png")).num_captions == 1
    assert parse(built(files={"image": ("a.png", PNG)}, data={"num_captions": "3"})).num_captions == 3
    assert parse(request(PNG, "image/png", "num_captions=2")).num_captions == 2


# -- mode, Idempotency-Key, async jobs


@pytest.mark.parametrize("query", ["mode=", "mode=ASYNC", "mode=async&mode=sync", "mode=sync&mode=sync"])
def test_bad_mode_is_refused(query: str) -> None:
    with pytest.raises(InvalidRequest):
        wants_async(request(PNG, "image/png", query))


def test_mode() -> None:
    assert wants_async(request(PNG, "image/png", "mode=async"))
    assert not wants_async(request(PNG, "image/png", "mode=sync"))
    assert not wants_async(request(PNG, "image/png"))


@pytest.mark.parametrize(
    ("key", "accepted"),
    [("k", True), ("a b", True), ("~" * 255, True), ("x" * 256, False), ("a ", False), (" a", False), ("\x7f", False)],
)
def test_idempotency_key_form(key: str, accepted: bool) -> None:
    # HTTP strips spaces around a header value: a key may neither start nor end with one (" " arrived empty).
    assert (re.fullmatch(IDEMPOTENCY_KEY_PATTERN.strip("^$"), key) is not None) == accepted
    req = request(headers={"Idempotency-Key": key})
    if accepted:
        assert idempotency_key(req) == key
    else:
        with pytest.raises(InvalidRequest):
            idempotency_key(req)


def test_an_async_url_job_is_refused_at_once_when_url_input_is_off() -> None:
    # Before: 202, and a job bound to fail with url_not_allowed. Now the same 400 a synchronous request gets.
    off = load_settings(None, {}).replace("url_input", enabled=False)
    on = load_settings(None, {})
    with pytest.raises(UrlNotAllowed):
        asyncio.run(parse_api_request(built(json={"url": "https://a.b/c.png"}), off))
    assert asyncio.run(parse_api_request(built(json={"url": "https://a.b/c.png"}), on)).url == "https://a.b/c.png"
    assert asyncio.run(parse_api_request(built(json={"image": B64}), off)).image == PNG
