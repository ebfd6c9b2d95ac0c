"""End to end through real HTTP: uvicorn on a free port, the real tiny BLIP, no mocks."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"


def check_success_shape(body: dict[str, object], data: bytes) -> None:
    import hashlib

    assert body["status"] == "success"
    assert body["model"] == "test/tiny-blip"
    assert body["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert isinstance(body["cached"], bool)
    captions = body["captions"]
    assert isinstance(captions, list) and captions
    for caption in captions:
        assert isinstance(caption["text"], str) and caption["text"].strip()
        assert 0 < caption["confidence"] <= 1
        assert not caption["text"].startswith("a picture of")


def test_multipart_upload(live_server: LiveServer) -> None:
    data = photo(1)
    response = httpx.post(live_server.url + CAPTION, files={"image": ("cat.png", data, "image/png")})
    assert response.status_code == 200, response.text
    check_success_shape(response.json(), data)


def test_raw_image_body(live_server: LiveServer) -> None:
    data = photo(2, fmt="JPEG")
    response = httpx.post(live_server.url + CAPTION, content=data, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    check_success_shape(response.json(), data)


def test_json_base64_body(live_server: LiveServer) -> None:
    data = photo(3)
    response = httpx.post(live_server.url + CAPTION, json={"image": base64.b64encode(data).decode()})
    assert response.status_code == 200, response.text
    check_success_shape(response.json(), data)
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    again = httpx.post(live_server.url + CAPTION, json={"image": data_url})
    assert again.status_code == 200 and again.json()["image_sha256"] == response.json()["image_sha256"]


@pytest.mark.parametrize("where", ["query", "form", "json"])
def test_num_captions_3_gives_distinct_captions_sorted_by_confidence(live_server: LiveServer, where: str) -> None:
    data = photo(10 + len(where))
    url = live_server.url + CAPTION
    if where == "query":
        response = httpx.post(url + "?num_captions=3", content=data, headers={"Content-Type": "image/png"})
    elif where == "form":
        response = httpx.post(url, files={"image": ("x.png", data, "image/png")}, data={"num_captions": "3"})
    else:
        response = httpx.post(url, json={"image": base64.b64encode(data).decode(), "num_captions": 3})
    assert response.status_code == 200, response.text
    captions = response.json()["captions"]
    assert len(captions) == 3
    texts = [c["text"] for c in captions]
    assert len(set(texts)) == 3
    confidences = [c["confidence"] for c in captions]
    assert confidences == sorted(confidences, reverse=True)


def test_second_identical_request_is_cached(live_server: LiveServer) -> None:
    data = photo(20)
    first = httpx.post(live_server.url + CAPTION, content=data, headers={"Content-Type": "image/png"}).json()
    hits_before = live_server.metric("captioner_cache_hits_total")
    second = httpx.post(live_server.url + CAPTION, content=data, headers={"Content-Type": "image/png"}).json()
    assert first["cached"] is False
    assert second["cached"] is True
    assert second["captions"] == first["captions"]
    assert live_server.metric("captioner_cache_hits_total") == hits_before + 1
    # A different num_captions is a different answer, hence a different cache entry.
    third = httpx.post(
        live_server.url + CAPTION + "?num_captions=2", content=data, headers={"Content-Type": "image/png"}
    ).json()
    assert third["cached"] is False and len(third["captions"]) == 2


async def post_many(url: str, images: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(client.post(url + CAPTION, content=d, headers={"Content-Type": "image/png"}) for d in images)
        )


def test_concurrent_requests_share_generate_calls(live_server: LiveServer) -> None:
    images = [photo(100 + i) for i in range(16)]
    count_before = live_server.metric("captioner_batch_size_count")
    sum_before = live_server.metric("captioner_batch_size_sum")
    responses = asyncio.run(post_many(live_server.url, images))
    assert [r.status_code for r in responses] == [200] * 16
    assert all(r.json()["cached"] is False for r in responses)
    generate_calls = live_server.metric("captioner_batch_size_count") - count_before
    assert live_server.metric("captioner_batch_size_sum") - sum_before == 16
    assert generate_calls < 16


def reference_caption(model_dir: Path, data: bytes) -> str:
    """What BLIP itself says for this image alone, through transformers' own processor and generate()."""
    import io

    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(model_dir)
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    inputs = processor(images=image, text="a picture of ", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, num_beams=3, max_length=20, min_length=5)
    text = processor.decode(out[0], skip_special_tokens=True)
    return re.sub(r"^a picture of\s*", "", text).strip()


def test_parity_batched_captions_equal_generate_alone(live_server: LiveServer, tiny_model_dir: Path) -> None:
    images = [photo(200 + i) for i in range(8)]
    count_before = live_server.metric("captioner_batch_size_count")
    responses = asyncio.run(post_many(live_server.url, images))
    assert live_server.metric("captioner_batch_size_count") - count_before < 8  # they really were batched
    served = [r.json()["captions"][0]["text"] for r in responses]
    expected = [reference_caption(tiny_model_dir, d) for d in images]
    assert served == expected
    assert len(set(served)) > 1  # the images really are told apart


def test_health_ready_metrics_openapi(live_server: LiveServer) -> None:
    assert httpx.get(live_server.url + "/healthz").status_code == 200
    ready = httpx.get(live_server.url + "/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    text = httpx.get(live_server.url + "/metrics").text
    for series in (
        "captioner_requests_total", "captioner_request_seconds_bucket", "captioner_batch_size_bucket",
        "captioner_queue_depth", "captioner_inference_seconds_bucket", "captioner_cache_hits_total",
        "captioner_cache_misses_total",
    ):  # fmt: skip
        assert re.search(rf"^{series}", text, re.MULTILINE), series
    spec = httpx.get(live_server.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "post" in spec["paths"][CAPTION]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"json": {"image": "***"}}, 422, "invalid_request"),
        ({"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 422, "invalid_request"),
        ({"files": {"picture": ("x.png", b"x", "image/png")}}, 422, "invalid_request"),
        ({"json": {"url": ""}}, 422, "invalid_request"),  # a 500 before (an assertion on the missing input)
        ({"json": {"url": "http://a..b.com/x.jpg"}}, 400, "url_not_allowed"),  # UnicodeError in getaddrinfo before
        ({"json": {"url": f"http://{'a' * 64}.com/x.jpg"}}, 400, "url_not_allowed"),
    ],
)
def test_errors_have_the_contract_shape(
    live_server: LiveServer, kwargs: dict[str, object], status: int, code: str
) -> None:
    response = httpx.post(live_server.url + CAPTION, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_num_captions_out_of_range(live_server: LiveServer) -> None:
    for value in ("0", "4", "abc", "-1"):
        response = httpx.post(
            live_server.url + CAPTION + f"?num_captions={value}",
            content=photo(1),
            headers={"Content-Type": "image/png"},
        )
        assert response.status_code == 422, value
        assert response.json()["error"]["code"] == "invalid_request"


def test_unknown_route_is_a_json_404(live_server: LiveServer) -> None:
    response = httpx.get(live_server.url + "/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_readyz_says_failed_without_the_load_errors_text(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The load error (paths, hub names, library messages) goes to the log, never to an unauthenticated probe."""
    from starlette.testclient import TestClient

    from captioner.http.app import create_app

    missing = tmp_path / "secret-internal-path" / "no-model-here"
    settings = tiny_settings(tiny_model_dir).replace("model", path=str(missing))
    fatal: list[bool] = []
    app = create_app(settings, on_fatal=lambda: fatal.append(True))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fatal
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "failed"}
    assert "secret-internal-path" not in answer.text
