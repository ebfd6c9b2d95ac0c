"""Faults: a failing model, CUDA out-of-memory, and crashes in the worker threads or the scheduler.

The rule under test: a fault fails only the requests it touches, every future is resolved (no request ever
hangs), and the next batch works. These run below HTTP, through ``CaptionService`` and the ``Batcher``: with a
fake model where the fault is the point, and with the real tiny BLIP (its ``generate`` made to run out of
memory) to show that ``BlipCaptioner`` itself splits batches.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from captioner.errors import CaptionerError, ModelError
from captioner.model.blip import split_on_oom
from captioner.observability.metrics import Metrics
from captioner.serving.batcher import Batcher
from captioner.serving.service import CaptionService
from tests.conftest import tiny_settings
from tests.support.fakes import FakeCaptioner, FakeClock, GatedModel, settle

pytestmark = pytest.mark.anyio

# Long enough that a batch only ever flushes because it is full: batches are formed deterministically.
NEVER_MS = 600_000
GUARD_S = 30  # a wall-clock bound on awaits that would hang forever if a future were left unresolved


def oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# ---------------------------------------------------------------------------------------------- split_on_oom


def test_split_on_oom_halves_until_the_batch_fits() -> None:
    sizes: list[int] = []

    def run(jobs: Sequence[int]) -> list[int]:
        sizes.append(len(jobs))
        if len(jobs) > 3:
            raise oom()
        return [job * 10 for job in jobs]

    assert split_on_oom(run, list(range(8))) == [j * 10 for j in range(8)]  # every result, in order
    assert sizes == [8, 4, 2, 2, 4, 2, 2]


def test_split_on_oom_gives_up_at_size_one() -> None:
    sizes: list[int] = []

    def run(jobs: Sequence[int]) -> list[int]:
        sizes.append(len(jobs))
        raise oom()

    with pytest.raises(torch.cuda.OutOfMemoryError):
        split_on_oom(run, list(range(4)))
    assert sizes == [4, 2, 1]


def test_other_errors_are_not_retried() -> None:
    calls = 0

    def run(jobs: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError):
        split_on_oom(run, list(range(4)))
    assert calls == 1


def test_the_failed_attempt_is_freed_before_the_retry() -> None:
    """On a GPU the retry only fits if the tensors of the failed attempt are gone; here, a stand-in object."""

    class Activations:
        pass

    held: list[weakref.ref[Activations]] = []

    def run(jobs: Sequence[int]) -> list[int]:
        assert all(ref() is None for ref in held), "the failed attempt's frames are still alive"
        if len(jobs) > 1:
            activations = Activations()
            held.append(weakref.ref(activations))
            raise oom()
        return list(jobs)

    assert split_on_oom(run, [1, 2]) == [1, 2]
    assert len(held) == 1


# ---------------------------------------------------------------------------------------------- a fake model


def service_for(captioner: Any, batch_size: int, tiny_model_dir: Path, **batching: Any) -> CaptionService:
    settings = tiny_settings(
        tiny_model_dir,
        batching={"max_batch_size": batch_size, "max_wait_ms": NEVER_MS, **batching},
        cache={"max_entries": 0},  # every request reaches the model
    )
    return CaptionService(settings, captioner, Metrics())


async def caption_all(service: CaptionService, images: list[bytes]) -> list[Any]:
    """Caption concurrently; each result is the outcome or the exception it raised."""
    return await asyncio.wait_for(
        asyncio.gather(*(service.caption(data, 1) for data in images), return_exceptions=True), GUARD_S
    )


def texts_of(results: list[Any]) -> list[str]:
    return [result.captions[0].text for result in results]


def assert_model_errors(results: list[Any]) -> None:
    for result in results:
        assert isinstance(result, ModelError), result
        assert result.status_code == 500 and result.code == "model_error"
        assert "out of memory" not in result.message and "exploded" not in result.message  # generic message


@pytest.fixture
def fake() -> FakeCaptioner:
    return FakeCaptioner()


async def test_a_model_exception_fails_only_its_batch(fake: FakeCaptioner, tiny_model_dir: Path) -> None:
    fake.raise_when = lambda texts: RuntimeError("model exploded") if "poison" in texts else None
    service = service_for(fake, 3, tiny_model_dir)
    service.start()
    try:
        first = await caption_all(service, [b"a", b"poison", b"b"])
        assert_model_errors(first)
        second = await caption_all(service, [b"c", b"d", b"e"])
        assert texts_of(second) == ["c", "d", "e"]
        assert [sorted(batch) for batch in fake.batches] == [["a", "b", "poison"], ["c", "d", "e"]]
        assert fake.threads == {name for name in fake.threads if name.startswith("captioner-model")}
    finally:
        await service.close(5)


@pytest.mark.parametrize("crash", [SystemExit(3), KeyboardInterrupt(), MemoryError()], ids=type)
async def test_a_crash_in_the_model_thread_resolves_every_future(
    fake: FakeCaptioner, tiny_model_dir: Path, crash: BaseException
) -> None:
    fake.raise_when = lambda texts: crash if "crash" in texts else None
    service = service_for(fake, 2, tiny_model_dir)
    service.start()
    try:
        assert_model_errors(await caption_all(service, [b"crash", b"bystander"]))
        assert texts_of(await caption_all(service, [b"after-1", b"after-2"])) == ["after-1", "after-2"]
    finally:
        await service.close(5)


async def test_a_crash_in_preprocessing_reaches_every_identical_caller(
    fake: FakeCaptioner, tiny_model_dir: Path
) -> None:
    """Single-flight: callers that joined the failing computation get its error too, and nobody hangs."""
    fake.preprocess_error = RuntimeError("decoder bug")
    service = service_for(fake, 4, tiny_model_dir)
    service.start()
    try:
        results = await caption_all(service, [b"same", b"same", b"same"])
        assert all(isinstance(r, RuntimeError) and not isinstance(r, CaptionerError) for r in results), results
        fake.preprocess_error = None
        service.batcher.max_batch_size = 1
        assert texts_of(await caption_all(service, [b"same"])) == ["same"]  # the failure was not remembered
    finally:
        await service.close(5)


async def test_a_crashed_scheduling_step_fails_the_queue_and_the_batcher_goes_on() -> None:
    class BrokenClock(FakeClock):
        broken = False

        def now(self) -> float:
            if self.broken:
                raise RuntimeError("clock bug")
            return super().now()

    clock = BrokenClock()
    model = GatedModel(open_gate=True)
    batcher: Batcher[str, str] = Batcher(model, max_batch_size=1, max_wait_s=1, max_queue=8, clock=clock)
    batcher.start()
    queued = batcher.submit("a")
    clock.broken = True
    await settle()
    assert isinstance(queued.exception(), ModelError)
    clock.broken = False
    # Before the fix the scheduler task died here, and every later request queued forever.
    assert await asyncio.wait_for(batcher("b"), GUARD_S) == "caption of b"
    assert model.batches == [["b"]]
    assert await batcher.drain(GUARD_S)


# ---------------------------------------------------------------------------------------------- the real model
