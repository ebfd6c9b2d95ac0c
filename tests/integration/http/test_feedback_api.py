"""``POST /api/v1/feedback`` through real HTTP: what is kept, what is counted, and a 4xx for every bad field."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from captioner.errors import InvalidRequest
from captioner.feedback.store import FeedbackRecord
from captioner.http.feedback_api import NOT_BLANK, parse_feedback
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

FEEDBACK = "/api/v1/feedback"
CAPTION = "/api/v1/caption"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("feedback")
    with LiveServer(tiny_settings(tiny_model_dir, feedback={"path": str(folder), "keep_images": True})) as live:
        yield live


def captioned(server: LiveServer, seed: int) -> tuple[bytes, dict[str, Any]]:
    data = photo(seed)
    response = httpx.post(server.url + CAPTION, content=data, headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return data, body


def stored(server: LiveServer) -> list[FeedbackRecord]:
    records: list[FeedbackRecord] = asyncio.run(server.app.state.captioner.feedback.store.records())
    return records


def send(server: LiveServer, payload: Any) -> httpx.Response:
    return httpx.post(server.url + FEEDBACK, json=payload, timeout=30)


def test_a_rating_is_kept_counted_and_credited_to_its_variant(server: LiveServer) -> None:
    _, body = captioned(server, 41)
    before = server.metric("captioner_feedback_total", 'variant="default",rating="5"')
    stats = server.app.state.captioner.feedback.stats

    response = send(server, {"image_sha256": body["image_sha256"], "caption": body["captions"][0]["text"], "rating": 5})

    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    assert server.metric("captioner_feedback_total", 'variant="default",rating="5"') == before + 1
    assert stats.approval("default")[0] >= 1
    record = stored(server)[-1]
    assert (record.image_sha256, record.rating, record.variant, record.correction) == (
        body["image_sha256"], 5, "default", None
    )  # fmt: skip


def test_a_job_is_rated_by_its_id(server: LiveServer) -> None:
    accepted = httpx.post(
        server.url + CAPTION + "?mode=async", content=photo(42), headers={"Content-Type": "image/png"}, timeout=60
    ).json()
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{server.url}{CAPTION}/{accepted['job_id']}").json())["status"] == "processing":
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.05)

    response = send(server, {"job_id": job["job_id"], "caption": "a dog", "rating": 1, "correction": "a red ball"})

    assert response.status_code == 202, response.text
    record = stored(server)[-1]
    assert (record.job_id, record.image_sha256, record.variant) == (job["job_id"], job["image_sha256"], "default")
    assert record.correction == "a red ball"
    unknown = send(server, {"job_id": "0" * 32, "caption": "a dog", "rating": 1})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")


def test_an_image_is_kept_only_when_it_is_the_rated_one(server: LiveServer) -> None:
    data, body = captioned(server, 43)
    sha = body["image_sha256"]
    image = base64.b64encode(data).decode()

    assert send(server, {"image_sha256": sha, "caption": "x", "rating": 4, "image": image}).status_code == 202
    assert asyncio.run(server.app.state.captioner.feedback.store.image(sha)) == data
    other = hashlib.sha256(b"another image").hexdigest()
    mismatch = send(server, {"image_sha256": other, "caption": "x", "rating": 4, "image": image})
    assert mismatch.status_code == 422 and "'image'" in mismatch.json()["error"]["message"]


SHA = "ab" * 32
GOOD = {"image_sha256": SHA, "caption": "a cat", "rating": 3}


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({k: v for k, v in GOOD.items() if k != "rating"}, "rating"),
        ({**GOOD, "rating": 0}, "rating"),
        ({**GOOD, "rating": 6}, "rating"),
        ({**GOOD, "rating": "5"}, "rating"),
        ({**GOOD, "rating": True}, "rating"),
        ({**GOOD, "rating": 2.5}, "rating"),
        ({k: v for k, v in GOOD.items() if k != "caption"}, "caption"),
        ({**GOOD, "caption": "  "}, "caption"),
        ({**GOOD, "caption": "x" * 1001}, "caption"),
        ({**GOOD, "correction": ""}, "correction"),
        ({**GOOD, "correction": 7}, "correction"),
        ({**GOOD, "job_id": "0" * 32}, "exactly one"),
        ({"caption": "a cat", "rating": 3}, "exactly one"),
        ({**GOOD, "image_sha256": SHA.upper()}, "image_sha256"),
        ({**GOOD, "image_sha256": SHA[:63]}, "image_sha256"),
        ({"job_id": "not-a-job", "caption": "a cat", "rating": 3}, "job_id"),
        ({**GOOD, "image": "not base64!"}, "image"),
        ({**GOOD, "stars": 5}, "stars"),
        (["a", "list"], "object"),
    ],
)
def test_every_bad_field_is_a_422_naming_it(server: LiveServer, payload: Any, named: str) -> None:
    before = len(stored(server))

    response = send(server, payload)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert named in response.json()["error"]["message"]
    assert len(stored(server)) == before


def test_not_json_is_refused(server: LiveServer) -> None:
    not_json = httpx.post(server.url + FEEDBACK, content=b"{oops", headers={"Content-Type": "application/json"})
    plain = httpx.post(server.url + FEEDBACK, content=b"rating=5", headers={"Content-Type": "text/plain"})

    assert (not_json.status_code, not_json.json()["error"]["code"]) == (422, "invalid_request")
    assert (plain.status_code, plain.json()["error"]["code"]) == (415, "unsupported_media_type")


def test_feedback_can_be_turned_off(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = tiny_settings(tiny_model_dir, feedback={"enabled": False, "path": str(tmp_path)})
    with LiveServer(settings) as server:
        response = send(server, GOOD)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert list(tmp_path.iterdir()) == []


def test_a_rating_is_credited_to_the_variant_that_served_the_caption(tiny_model_dir: Path) -> None:
    variants = [{"variant": v, "weight": 50, "path": str(tiny_model_dir), "name": f"test/tiny-{v}"} for v in "ab"]
    with LiveServer(tiny_settings(tiny_model_dir, models={"variants": variants})) as server:
        served: dict[str, str] = {}
        for seed in range(60, 72):
            _, body = captioned(server, seed)
            served[body["image_sha256"]] = body["variant"]
            assert send(server, {"image_sha256": body["image_sha256"], "caption": "x", "rating": 4}).status_code == 202
        credited = {v: server.metric("captioner_feedback_total", f'variant="{v}"') for v in "ab"}
        approval = {v: server.app.state.captioner.feedback.stats.approval(v) for v in "ab"}

    assert set(served.values()) == {"a", "b"}  # the split is a hash of the image: these seeds reach both
    assert credited == {v: sum(1 for s in served.values() if s == v) for v in "ab"}
    assert approval == {v: (credited[v], 1.0) for v in "ab"}


# -- the parser alone, as the OpenAPI document describes it (the fuzzer's findings)


def test_an_integral_rating_is_an_integer_however_written() -> None:
    # JSON has one number type and JSON Schema's "integer" takes 4.0: the document allowed it, the server refused.
    assert parse_feedback({**GOOD, "rating": 4.0}).rating == 4
    for bad in (4.5, 0.0, 6.0, 1e300, "4"):
        with pytest.raises(InvalidRequest):
            parse_feedback({**GOOD, "rating": bad})


def test_blank_means_what_the_documented_pattern_says() -> None:
    """A caption of Python whitespace (what ``str.strip`` removes) is blank; ``\\S`` in the document's regex
    dialect is another set (it let "\\x1c" through, which the server then refused). NOT_BLANK spells it out."""
    everything = "".join(map(chr, range(0x110000))).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    blank = re.sub(NOT_BLANK, "", everything)
    assert set(blank) == {c for c in everything if c.isspace()}
    validator = {"type": "string", "pattern": NOT_BLANK}  # the fuzzer's dialect (ECMA-262), not Python's
    for text in [*blank, "\ufeff", "\u200b", "\x1b", "a", " a "]:
        in_document = jsonschema_rs.is_valid(validator, text)
        try:
            parse_feedback({**GOOD, "caption": text})
            accepted = True
        except InvalidRequest:
            accepted = False
        assert in_document == accepted == bool(text.strip()), repr(text)
