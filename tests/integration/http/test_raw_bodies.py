"""Raw image bodies whatever the Content-Type says, and ``POST /`` in Hugging Face's image-to-text shape.

curl's ``--data-binary`` without ``-H`` sends ``application/x-www-form-urlencoded``; Hugging Face's client and
many others send no Content-Type at all. Their bodies are read as images when the magic bytes say so.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"
JPEG = photo(21, fmt="JPEG")


def post(server: LiveServer, path: str, body: bytes, content_type: str | None, **kw: Any) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    request = httpx.Request("POST", server.url + path, content=body, headers={**headers, **kw.pop("headers", {})})
    assert content_type is not None or "content-type" not in request.headers
    with httpx.Client(timeout=60) as client:
        return client.send(request)


def top_caption(server: LiveServer, data: bytes, **kw: Any) -> str:
    response = post(server, CAPTION, data, "image/jpeg", **kw)
    assert response.status_code == 200, response.text
    text: str = response.json()["captions"][0]["text"]
    return text


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "application/octet-stream"])
def test_an_image_is_an_image_whatever_the_content_type(live_server: LiveServer, content_type: str | None) -> None:
    response = post(live_server, CAPTION, JPEG, content_type)

    assert response.status_code == 200, response.text
    assert response.json()["captions"][0]["text"] == top_caption(live_server, JPEG)


def test_a_body_that_is_no_image_keeps_its_clear_error(live_server: LiveServer) -> None:
    # urlencoded naming none of the form fields: bytes sent as curl --data-binary sends a file, and no image, as
    # for octet-stream (the OpenAPI document describes that body as the image's bytes). A real form is a 422.
    form = post(live_server, CAPTION, b"name=cat&size=2", "application/x-www-form-urlencoded")
    real_form = post(live_server, CAPTION, b"image=cat", "application/x-www-form-urlencoded")
    nothing = post(live_server, CAPTION, b"just some text", None)
    octets = post(live_server, CAPTION, b"just some text", "application/octet-stream")

    assert (form.status_code, form.json()["error"]["code"]) == (400, "invalid_image")
    assert "image" in form.json()["error"]["message"]
    assert (real_form.status_code, real_form.json()["error"]["code"]) == (422, "invalid_request")
    assert (nothing.status_code, nothing.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert (octets.status_code, octets.json()["error"]["code"]) == (400, "invalid_image")


def test_post_root_answers_like_hugging_face(live_server: LiveServer) -> None:
    raw = post(live_server, "/", JPEG, None)
    as_json = httpx.post(live_server.url + "/", json={"inputs": base64.b64encode(JPEG).decode()}, timeout=60)

    assert raw.status_code == 200, raw.text
    assert raw.json() == [{"generated_text": top_caption(live_server, JPEG)}]
    assert as_json.json() == raw.json()
    assert httpx.get(live_server.url + "/").headers["content-type"].startswith("text/html")  # GET: the page


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (JPEG[:300], None, 400, "invalid_image"),
        (b"", "image/jpeg", 400, "invalid_image"),
        (b'{"image": "aGk="}', "application/json", 422, "invalid_request"),
        (b'{"inputs": "not base64!"}', "application/json", 422, "invalid_request"),
        (b"{not json", "application/json", 422, "invalid_request"),
    ],
    ids=["corrupt", "empty", "no-inputs", "bad-base64", "bad-json"],
)
def test_post_root_errors_keep_the_contract_shape(
    live_server: LiveServer, body: bytes, content_type: str | None, status: int, code: str
) -> None:
    response = post(live_server, "/", body, content_type)

    assert response.status_code == status, response.text
    assert response.json()["status"] == "error"
    assert response.json()["error"]["code"] == code


@pytest.fixture(scope="module")
def guarded_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    settings = tiny_settings(
        tiny_model_dir, auth={"api_keys": ["hf-key"]}, rate_limit={"per_key_rps": 0.01, "burst": 2}
    )
    with LiveServer(settings) as live:
        yield live


def test_post_root_passes_the_same_gate(guarded_server: LiveServer) -> None:
    key = {"Authorization": "Bearer hf-key"}

    assert post(guarded_server, "/", JPEG, None).status_code == 401
    assert post(guarded_server, "/", JPEG, None, headers=key).status_code == 200
    assert post(guarded_server, CAPTION, JPEG, "image/jpeg", headers=key).status_code == 200  # one bucket for both
    limited = post(guarded_server, "/", JPEG, None, headers=key)
    assert (limited.status_code, limited.json()["error"]["code"]) == (429, "rate_limited")
    assert httpx.get(guarded_server.url + "/").status_code == 200  # the web page stays open
