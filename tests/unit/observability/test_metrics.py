"""Prometheus series: each one moves as it should under real traffic through a live tiny-model server, and the
GPU collector reports NVML's numbers (fake NVML) or nothing at all (this CPU-only machine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from captioner.observability.gpu_metrics import GpuCollector, cuda_index
from captioner.observability.metrics import Metrics
from tests.conftest import LiveServer, photo, tiny_settings

CAPTION = "/api/v1/caption"
PNG = {"Content-Type": "image/png"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


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


# ---- the GPU collector, against a fake NVML ----


class FakeNvml:
    """The slice of pynvml that GpuCollector uses, with a GPU per UUID / index."""

    def __init__(self, *, fail_init: Exception | None = None) -> None:
        self.fail_init = fail_init
        self.fail_queries: Exception | None = None
        self.inits = 0
        self.gpus = {"GPU-aaaa": "gpu0", "GPU-bbbb": "gpu1"}
        self.by_index = ["gpu0", "gpu1", "gpu2", "gpu3", "gpu4", "gpu5"]
        self.util = {"gpu0": 10, "gpu1": 37, "gpu5": 99}
        self.memory = {
            "gpu0": SimpleNamespace(total=80 * 2**30, used=2**30, free=79 * 2**30),
            "gpu1": SimpleNamespace(total=141 * 2**30, used=40 * 2**30, free=101 * 2**30),
            "gpu5": SimpleNamespace(total=16 * 2**30, used=15 * 2**30, free=2**30),
        }

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.fail_init is not None:
            raise self.fail_init

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return self.gpus[uuid]

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return self.by_index[index]

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        if self.fail_queries is not None:
            raise self.fail_queries
        return SimpleNamespace(gpu=self.util[handle], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        if self.fail_queries is not None:
            raise self.fail_queries
        return self.memory[handle]


def gpu_samples(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        s.name + "".join(f"[{v}]" for v in s.labels.values()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("captioner_gpu_")
    }


def test_cuda_index_parsing() -> None:
    assert cuda_index("cuda") == 0 and cuda_index("cuda:3") == 3 and cuda_index("CUDA:1") == 1
    assert cuda_index("cpu") is None and cuda_index("mps") is None and cuda_index("cuda:x") is None


def test_gpu_series_come_from_the_models_gpu_by_uuid() -> None:
    nvml = FakeNvml()
    metrics = Metrics(gpu=GpuCollector(nvml, uuid_of=lambda index: ["GPU-aaaa", "GPU-bbbb"][index]))
    assert gpu_samples(metrics) == {}  # nothing before the model is placed
    assert metrics.watch_gpu("cuda:1") is True
    assert gpu_samples(metrics) == {
        "captioner_gpu_utilization_ratio": pytest.approx(0.37),
        "captioner_gpu_memory_bytes[used]": 40 * 2**30,
        "captioner_gpu_memory_bytes[free]": 101 * 2**30,
        "captioner_gpu_memory_bytes[total]": 141 * 2**30,
    }
    nvml.util["gpu1"] = 80
    assert gpu_samples(metrics)["captioner_gpu_utilization_ratio"] == pytest.approx(0.8)  # read at each scrape


def test_gpu_without_uuid_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    collector = GpuCollector(FakeNvml(), uuid_of=lambda index: None)
    assert collector.watch("cuda:1")
    metrics = Metrics(gpu=collector)
    assert gpu_samples(metrics)["captioner_gpu_utilization_ratio"] == pytest.approx(0.99)  # physical GPU 5


def test_no_gpu_series_on_cpu_or_without_nvml() -> None:
    nvml = FakeNvml()
    on_cpu = Metrics(gpu=GpuCollector(nvml, uuid_of=lambda index: "GPU-aaaa"))
    assert on_cpu.watch_gpu("cpu") is False
    assert nvml.inits == 0 and gpu_samples(on_cpu) == {}

    no_driver = FakeNvml(fail_init=RuntimeError("NVML Shared Library Not Found"))
    metrics = Metrics(gpu=GpuCollector(no_driver, uuid_of=lambda index: "GPU-aaaa"))
    assert metrics.watch_gpu("cuda") is False
    assert gpu_samples(metrics) == {}
    assert b"captioner_ready" in generate_latest(metrics.registry)  # the rest of the scrape is unaffected


def test_real_nvidia_ml_py_on_this_cpu_machine_yields_nothing() -> None:
    metrics = Metrics()  # the real nvidia-ml-py (a core dependency): no NVIDIA driver here
    assert metrics.watch_gpu("cuda:0") is False
    assert gpu_samples(metrics) == {}


def test_gpu_that_stops_answering_drops_its_series_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml()
    metrics = Metrics(gpu=GpuCollector(nvml, uuid_of=lambda index: "GPU-aaaa"))
    assert metrics.watch_gpu("cuda:0")
    assert gpu_samples(metrics)["captioner_gpu_utilization_ratio"] == pytest.approx(0.1)
    nvml.fail_queries = RuntimeError("GPU is lost")
    with caplog.at_level(logging.WARNING, logger="captioner.gpu"):
        assert gpu_samples(metrics) == {}
        assert gpu_samples(metrics) == {}
    assert [r.getMessage() for r in caplog.records].count(
        "GPU metrics unavailable: NVML query failed: GPU is lost"
    ) == 1
    nvml.fail_queries = None
    assert gpu_samples(metrics)["captioner_gpu_memory_bytes[used]"] == 2**30  # back once it answers again
