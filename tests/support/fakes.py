"""Test doubles: a clock that only moves when told, a batcher model gated by an asyncio.Event, and a captioner
whose captions are its images' bytes (for unit tests that need control of timing or faults, never HTTP tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import torch

from captioner.model.preprocessing import ImageInfo, PreparedImage
from captioner.model.protocol import Caption, CaptionJob


class FakeClock:
    def __init__(self) -> None:
        self.time = 0.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def wait_for_event(self, event: asyncio.Event, timeout: float) -> None:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((self.time + timeout, timer))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._timers = [(d, t) for d, t in self._timers if t is not timer]

    async def advance(self, seconds: float) -> None:
        self.time += seconds
        for deadline, timer in self._timers:
            if deadline <= self.time and not timer.done():
                timer.set_result(None)
        await settle()


async def settle() -> None:
    """Let every ready task run until nothing more happens (yields to the loop; no wall-clock time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


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
