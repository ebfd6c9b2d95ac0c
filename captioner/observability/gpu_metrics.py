"""GPU health for Prometheus, read from NVML (nvidia-ml-py) when Prometheus scrapes.

Series, for the GPU the model runs on:

- ``captioner_gpu_utilization_ratio``: the share (0..1) of the last sample period in which a kernel ran;
- ``captioner_gpu_memory_bytes{kind="used"|"free"|"total"}``: the device's memory, all processes counted.

They are *absent* (no error, nothing logged above debug) when the model runs on the CPU, nvidia-ml-py is not
installed, or NVML cannot start (no driver, a container without the GPU). A GPU that later stops answering (fell
off the bus, driver reset) makes them disappear too, with one warning in the log: an absent series is what
Prometheus alerting (``absent()``) and Grafana already handle, a made-up zero would not be.

The model's GPU is found by UUID, because CUDA's device numbers (``cuda:N``, after ``CUDA_VISIBLE_DEVICES`` and
``CUDA_DEVICE_ORDER``) are not NVML's.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

UUIDLookup = Callable[[int], "str | None"]
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def cuda_index(device: str) -> int | None:
    """``"cuda"`` -> 0, ``"cuda:3"`` -> 3, anything else (``cpu``, ``mps``) -> None."""
    match = _CUDA.match(device.strip().lower())
    if match is None:
        return None
    return int(match.group(1) or 0)


def torch_uuid(index: int) -> str | None:
    """NVML's UUID ("GPU-<uuid>") of CUDA device ``index`` as torch numbers it, or None if torch can't say."""
    try:
        import torch  # only on a GPU node's first scrape

        if not torch.cuda.is_available():
            return None
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid


def _load_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


class GpuCollector(Collector):
    """Yields the GPU series once ``watch(device)`` names a CUDA device NVML can see; nothing otherwise.

    ``nvml`` is the pynvml module (or anything with its ``nvmlInit``, ``nvmlDeviceGetHandleByUUID``,
    ``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetUtilizationRates`` and ``nvmlDeviceGetMemoryInfo``); by
    default nvidia-ml-py is imported on the first ``watch``.
    """

    def __init__(self, nvml: Any = None, *, uuid_of: UUIDLookup = torch_uuid) -> None:
        self._nvml = nvml
        self._uuid_of = uuid_of
        self._handle: Any = None
        self._warned = False
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        # Nothing to pre-declare: the series exist only with a GPU, and an empty describe() keeps the
        # registry from calling collect() (and NVML) at registration.
        return []

    def watch(self, device: str) -> bool:
        """Start reporting on the GPU behind the torch ``device``; False (and no series) if there is none.

        Called once the model is loaded, off the request path: NVML's start-up can take tens of milliseconds.
        """
        index = cuda_index(device)
        with self._lock:
            self._handle = None
            if index is None:
                return False
            try:
                nvml = self._nvml if self._nvml is not None else _load_nvml()
                nvml.nvmlInit()
                self._handle = self._find(nvml, index)
                self._nvml = nvml
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
                log.debug("no GPU metrics for %s: %s", device, exc)
                return False
            self._warned = False
            return True

    def _find(self, nvml: Any, index: int) -> Any:
        uuid = self._uuid_of(index)
        if uuid is not None:
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
        # No UUID from torch: CUDA_VISIBLE_DEVICES maps CUDA's index to NVML's, when it lists plain numbers.
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if index < len(visible):
            entry = visible[index]
            if not entry.isdigit():
                return nvml.nvmlDeviceGetHandleByUUID(entry)
            index = int(entry)
        return nvml.nvmlDeviceGetHandleByIndex(index)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            handle, nvml = self._handle, self._nvml
            if handle is None:
                return
            try:
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:
                if not self._warned:
                    log.warning("GPU metrics unavailable: NVML query failed: %s", exc)
                    self._warned = True
                return
            self._warned = False
        yield GaugeMetricFamily(
            "captioner_gpu_utilization_ratio",
            "Share of the last sample period in which a kernel ran on the model's GPU (NVML).",
            value=float(utilization.gpu) / 100.0,
        )
        family = GaugeMetricFamily(
            "captioner_gpu_memory_bytes", "Memory of the model's GPU, all processes (NVML).", labels=["kind"]
        )
        for kind in ("used", "free", "total"):
            family.add_metric([kind], float(getattr(memory, kind)))
        yield family
