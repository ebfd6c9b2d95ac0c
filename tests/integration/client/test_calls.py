"""``Client`` and ``AsyncClient`` against a real server (the tiny model, in-thread): captions, errors, keys, jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from captioner.client import (
    AsyncClient,
    InvalidImage,
    InvalidRequest,
    NotFound,
    RetryEvent,
    Unauthorized,
    UrlNotAllowed,
)
from tests.support.client import Connect, sha256
from tests.support.images import photo
from tests.support.model import MODEL_NAME as MODEL
from tests.support.model import tiny_settings
from tests.support.servers import API_KEY, LiveServer

CORRUPT = photo(0)[:200]  # a PNG cut short


def test_captions_bytes_a_path_and_a_file_alike(connect: Connect, live_server: LiveServer, tmp_path: Path) -> None:
    data = photo(101)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    client = connect(live_server.url)

    first = client.caption(data)
    text, confidence = first.captions[0]
    assert first.text == text and 0 < confidence <= 1
    assert (first.model, first.image_sha256, first.variant) == (MODEL, sha256(data), "default")
    assert first.raw["status"] == "success"
    for image in (path, str(path)):
        again = client.caption(image)
        assert again.cached and again.captions == first.captions
    with path.open("rb") as file:
        assert client.caption(file).image_sha256 == sha256(data)


def test_num_captions(connect: Connect, live_server: LiveServer) -> None:
    result = connect(live_server.url).caption(photo(102), num_captions=2)

    assert len(result.captions) == 2
    assert len({c.text for c in result.captions}) == 2
    assert result.captions[0].confidence >= result.captions[1].confidence


def test_server_errors_are_typed_and_not_retried(connect: Connect, live_server: LiveServer) -> None:
    retries: list[RetryEvent] = []
    client = connect(live_server.url, on_retry=retries.append)
    refused_before = live_server.metric("captioner_requests_total", 'status="422"')

    with pytest.raises(InvalidImage) as corrupt:
        client.caption(CORRUPT)
    assert (corrupt.value.status_code, corrupt.value.code) == (400, "invalid_image")
    assert corrupt.value.message and corrupt.value.request_id
    with pytest.raises(InvalidRequest) as bad_count:
        client.caption(photo(103), num_captions=99)
    assert (bad_count.value.status_code, bad_count.value.code) == (422, "invalid_request")
    assert "num_captions" in bad_count.value.message
    # A URL goes to the server as JSON {"url": ...}; the server refuses to fetch from loopback.
    with pytest.raises(UrlNotAllowed) as url:
        client.caption(f"{live_server.url}/healthz")
    assert url.value.status_code == 400

    assert retries == []
    assert live_server.metric("captioner_requests_total", 'status="422"') == refused_before + 1


def test_api_key_from_the_argument_or_the_environment(
    connect: Connect, keyed_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPTIONER_API_KEY", raising=False)
    with pytest.raises(Unauthorized) as missing:
        connect(keyed_server.url).caption(photo(104))
    assert missing.value.status_code == 401
    assert connect(keyed_server.url, api_key=API_KEY).caption(photo(104)).model == MODEL

    monkeypatch.setenv("CAPTIONER_API_KEY", API_KEY)
    assert connect(keyed_server.url).caption(photo(104)).cached
    with pytest.raises(Unauthorized):
        connect(keyed_server.url, api_key="wrong").caption(photo(104))  # the argument wins
    with pytest.raises(Unauthorized):
        connect(keyed_server.url, api_key="").caption(photo(104))  # "" sends no key at all


@pytest.fixture(scope="module")
def rated_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("feedback")
    with LiveServer(tiny_settings(tiny_model_dir, feedback={"path": str(folder)})) as live:
        yield live


def test_feedback_reaches_the_server(connect: Connect, rated_server: LiveServer) -> None:
    client = connect(rated_server.url)
    result = client.caption(photo(120))
    job = client.submit(photo(121))
    client.result(job)
    before = rated_server.metric("captioner_feedback_total", 'variant="default"')

    client.feedback(image_sha256=result.image_sha256, caption=result.text, rating=5, correction="a red square")
    client.feedback(job_id=job.job_id, caption="a cat", rating=1)

    assert rated_server.metric("captioner_feedback_total", 'variant="default"') == before + 2
    with pytest.raises(InvalidRequest) as bad:
        client.feedback(image_sha256=result.image_sha256, caption=result.text, rating=6)
    assert "rating" in bad.value.message
    with pytest.raises(NotFound):
        client.feedback(job_id="0" * 32, caption="a cat", rating=1)


# -- async jobs ------------------------------------------------------------------------------------------


def test_job_submit_and_result(connect: Connect, live_server: LiveServer) -> None:
    client = connect(live_server.url)
    data = photo(108)

    job = client.submit(data, num_captions=2)
    result = client.result(job)

    assert job.estimated_time_s is not None
    assert (result.job_id, result.image_sha256, len(result.captions)) == (job.job_id, sha256(data), 2)
    assert client.result(job.job_id).captions == result.captions


def test_a_failed_job_raises_its_error(connect: Connect, live_server: LiveServer) -> None:
    client = connect(live_server.url)

    job = client.submit(CORRUPT)  # accepted: the image is only decoded when the job runs
    with pytest.raises(InvalidImage) as failed:
        client.result(job)
    assert (failed.value.status_code, failed.value.code) == (400, "invalid_image")
    with pytest.raises(NotFound) as unknown:
        client.result("0" * 32)
    assert unknown.value.status_code == 404


@pytest.mark.anyio
async def test_async_client_captions_concurrently(live_server: LiveServer) -> None:
    images = [photo(seed) for seed in range(110, 114)]
    async with AsyncClient(live_server.url) as client:
        results = await asyncio.gather(*(client.caption(image) for image in images))
    assert [r.image_sha256 for r in results] == [sha256(image) for image in images]
