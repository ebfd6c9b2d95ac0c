"""The request, batch, cache and readiness series of a live server under real traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

CAPTION = "/api/v1/caption"
PNG = {"Content-Type": "image/png"}


def scrape(url: str) -> Samples:
    """Every sample of /metrics, keyed by (name, labels)."""
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, /, **labels: str) -> float:
    """The sum of the ``name`` samples that carry ``labels`` (whatever other labels, e.g. variant, they have)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


@pytest.fixture(scope="module")
def batching_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    # A long max_wait so that 16 concurrent requests on a busy 2-core machine still share batches.
    settings = tiny_settings(
        tiny_model_dir,
        batching={"max_wait_ms": 400, "max_batch_size": 16},
        generation={"num_beams": 1, "max_length": 8, "min_length": 1},
    )
    with LiveServer(settings) as server:
        yield server


def test_concurrent_traffic_moves_every_request_series(batching_server: LiveServer) -> None:
    url = batching_server.url
    before = scrape(url)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(client.post(url + CAPTION, content=photo(5000 + i), headers=PNG) for i in range(16))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 16
    after = scrape(url)

    def grew(name: str, /, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    batches = grew("captioner_batch_size_count")
    assert grew("captioner_batch_size_sum") == 16
    assert 1 <= batches < 16  # at least one generate() served several requests
    assert grew("captioner_images_total") == 16
    assert grew("captioner_inference_seconds_count") == batches
    assert grew("captioner_inference_seconds_sum") > 0
    assert grew("captioner_batch_wait_seconds_count") == batches
    assert grew("captioner_batch_wait_seconds_sum") > 0
    assert grew("captioner_requests_total", status="200") == 16
    assert grew("captioner_request_seconds_count") == 16
    assert grew("captioner_cache_misses_total") == 16
    assert grew("captioner_cache_hits_total") == 0
    # Every request took longer than the fastest bucket and no longer than the slowest.
    assert grew("captioner_request_seconds_bucket", le="0.001") == 0
    assert grew("captioner_request_seconds_bucket", le="+Inf") == 16
    assert value(after, "captioner_queue_depth") == 0  # all answered
    assert value(after, "captioner_queue_capacity") == batching_server.settings.batching.max_queue


def test_cache_hits_errors_and_model_series(batching_server: LiveServer) -> None:
    url = batching_server.url
    data = photo(6000)
    before = scrape(url)
    first = httpx.post(url + CAPTION, content=data, headers=PNG, timeout=60)
    second = httpx.post(url + CAPTION, content=data, headers=PNG, timeout=60)
    assert (first.json()["cached"], second.json()["cached"]) == (False, True)
    bad = httpx.post(url + CAPTION, content=b"\x89PNG\r\n\x1a\n but then garbage", headers=PNG)
    assert bad.status_code == 400
    huge = httpx.post(url + CAPTION + "?num_captions=99", content=data, headers=PNG)
    assert huge.status_code == 422
    after = scrape(url)

    def grew(name: str, /, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("captioner_cache_misses_total") == 1 and grew("captioner_cache_hits_total") == 1
    assert grew("captioner_images_total") == 1  # the hit and the two failures never reached the model
    assert grew("captioner_errors_total", code="invalid_image") == 1
    assert grew("captioner_errors_total", code="invalid_request") == 1
    assert grew("captioner_requests_total", status="400") == 1
    assert grew("captioner_requests_total", status="422") == 1
    assert grew("captioner_requests_total", status="200") == 2
    assert grew("captioner_request_seconds_count") == 4
    assert value(after, "captioner_ready") == 1
    info = {"name": "test/tiny-blip", "revision": "main", "device": "cpu", "dtype": "float32"}
    assert value(after, "captioner_model_info", **info) == 1
    # No GPU here: the GPU series are absent (not zero), and the scrape still works.
    assert not [name for name, _ in after if name.startswith("captioner_gpu_")]


def test_ready_is_zero_until_loaded_and_after_drain(tiny_model_dir: Path) -> None:
    server = LiveServer(tiny_settings(tiny_model_dir))
    assert server.metrics.registry.get_sample_value("captioner_ready") == 0  # before start-up
    with server:
        assert server.metric("captioner_ready") == 1
    assert server.metrics.registry.get_sample_value("captioner_ready") == 0  # drained
