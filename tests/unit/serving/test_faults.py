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

import pytest
import torch

from captioner.errors import CaptionerError, ModelError
from captioner.model.blip import split_on_oom
from captioner.serving.batcher import Batcher
from tests.support.clock import FakeClock
from tests.support.fakes import FakeCaptioner, GatedModel
from tests.support.service import GUARD_S, assert_model_errors, caption_all, oom, service_for, texts_of
from tests.support.waits import settle

pytestmark = pytest.mark.anyio


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


@pytest.fixture
def fake() -> FakeCaptioner:
    return FakeCaptioner()


async def test_a_model_exception_fails_only_its_batch(fake: FakeCaptioner) -> None:
    fake.raise_when = lambda texts: RuntimeError("model exploded") if "poison" in texts else None
    service = service_for(fake, 3)
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
async def test_a_crash_in_the_model_thread_resolves_every_future(fake: FakeCaptioner, crash: BaseException) -> None:
    fake.raise_when = lambda texts: crash if "crash" in texts else None
    service = service_for(fake, 2)
    service.start()
    try:
        assert_model_errors(await caption_all(service, [b"crash", b"bystander"]))
        assert texts_of(await caption_all(service, [b"after-1", b"after-2"])) == ["after-1", "after-2"]
    finally:
        await service.close(5)


async def test_a_crash_in_preprocessing_reaches_every_identical_caller(fake: FakeCaptioner) -> None:
    """Single-flight: callers that joined the failing computation get its error too, and nobody hangs."""
    fake.preprocess_error = RuntimeError("decoder bug")
    service = service_for(fake, 4)
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
    clock = FakeClock()
    working_now = clock.now

    def now() -> float:
        if broken:
            raise RuntimeError("clock bug")
        return working_now()

    broken = False
    clock.now = now  # type: ignore[method-assign]
    model = GatedModel(open_gate=True)
    batcher: Batcher[str, str] = Batcher(model, max_batch_size=1, max_wait_s=1, max_queue=8, clock=clock)
    batcher.start()
    queued = batcher.submit("a")
    broken = True
    await settle()
    assert isinstance(queued.exception(), ModelError)
    broken = False
    # Before the fix the scheduler task died here, and every later request queued forever.
    assert await asyncio.wait_for(batcher("b"), GUARD_S) == "caption of b"
    assert model.batches == [["b"]]
    assert await batcher.drain(GUARD_S)


# ---------------------------------------------------------------------------------------------- the real model
