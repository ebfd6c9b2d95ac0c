"""Test doubles: a batcher model gated by an asyncio.Event, continuous batching's model side answering when told, a
captioner whose captions are its images' bytes (for
tests that need control of timing or faults, never HTTP tests), and the slice of NVML the GPU metrics read.

The fake clock is ``tests.support.clock.FakeClock``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from captioner.model.preprocessing import ImageInfo, PreparedImage
from captioner.model.protocol import Caption, CaptionJob


class GatedModel:
    """A fake ``run_batch``: records each batch and returns only once ``gate`` is set."""

    def __init__(self, *, open_gate: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()
        self.fail_when: str | None = None  # raise if a batch contains this item
        self.drop_one = False  # return one result too few

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_when is not None and self.fail_when in items:
            raise RuntimeError("model exploded")
        results = [f"caption of {item}" for item in items]
        return results[:-1] if self.drop_one else results


class FakeCaptioner:
    """Captions an image with its own bytes; raises on demand, on the model thread like the real one."""

    name = "fake"
    revision = "test"
    device = "cpu"
    dtype = "float32"
    untrained = True

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.raise_when: Callable[[list[str]], BaseException | None] = lambda texts: None
        self.preprocess_error: Exception | None = None
        self.threads: set[str] = set()

    def preprocess(self, data: bytes) -> PreparedImage:
        if self.preprocess_error is not None:
            raise self.preprocess_error
        values = torch.tensor(list(data), dtype=torch.float32)
        return PreparedImage(pixel_values=values, info=ImageInfo(format="PNG", width=1, height=1, mode="RGB"))

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        self.threads.add(threading.current_thread().name)
        texts = [bytes(int(v) for v in job.pixel_values.tolist()).decode() for job in jobs]
        self.batches.append(texts)
        error = self.raise_when(texts)
        if error is not None:
            raise error
        # As many captions as asked for, distinct and sorted by confidence, like the real model's.
        return [
            [Caption(text if n == 0 else f"{text} #{n + 1}", 0.5 / (n + 1)) for n in range(job.num_captions)]
            for text, job in zip(texts, jobs, strict=True)
        ]

    def warm_up(self) -> None:
        pass


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


class ScriptedDecoding:
    """A fake ``StepDecoding`` (continuous batching's model side): records joins and leaves; the test answers."""

    def __init__(self) -> None:
        self.sink: Any = None
        self.joined: dict[int, Any] = {}  # request id -> job, in join order
        self.left: list[int] = []
        self.closed = False

    def start(self, sink: Any) -> ScriptedDecoding:
        self.sink = sink
        return self

    def join(self, request_id: int, job: Any) -> None:
        self.joined[request_id] = job

    def leave(self, request_id: int) -> None:
        self.left.append(request_id)

    def close(self) -> None:
        self.closed = True

    def live(self) -> list[int]:
        return [i for i in self.joined if i not in self.left]

    def finish(self, request_id: int, text: str = "a caption") -> None:
        self.sink.finished(request_id, [Caption(text, 0.5)], 0.01)
