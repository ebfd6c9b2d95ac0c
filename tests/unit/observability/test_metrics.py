"""Prometheus series: each one moves as it should under real traffic through a live tiny-model server, and the
GPU collector reports NVML's numbers (fake NVML), or nothing at all on a machine without a GPU."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from captioner.observability.gpu_metrics import GpuCollector, cuda_index
from captioner.observability.metrics import Metrics
from tests.support.fakes import FakeNvml

# ---- the GPU collector, against a fake NVML ----


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


def nvml_sees_a_gpu() -> bool:
    """Whether the real NVML starts and counts a GPU here: judged apart from the collector under test."""
    import pynvml
    import torch

    try:
        pynvml.nvmlInit()
        return torch.cuda.is_available() and pynvml.nvmlDeviceGetCount() > 0
    except pynvml.NVMLError:
        return False


def test_real_nvidia_ml_py_reports_a_gpu_exactly_where_there_is_one() -> None:
    # The real nvidia-ml-py (a core dependency): on a machine without an NVIDIA driver it must start nothing
    # and yield nothing, without an error; on a GPU machine the series must be there.
    gpu = nvml_sees_a_gpu()
    metrics = Metrics()
    assert metrics.watch_gpu("cuda:0") is gpu
    samples = gpu_samples(metrics)
    if gpu:
        assert 0.0 <= samples["captioner_gpu_utilization_ratio"] <= 1.0
        assert samples["captioner_gpu_memory_bytes[total]"] > 0
    else:
        assert samples == {}


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
