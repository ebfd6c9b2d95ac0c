"""Continuous batching's scheduler (captioner/serving/continuous_batcher.py) against a scripted model side: requests
join at once while their rows fit, are answered when their own captions end, leave when cancelled or timed out
(freeing rows for the queue), and drain finishes what is live."""

from __future__ import annotations

import asyncio

import pytest

from captioner.errors import ModelError, Overloaded, RequestTimeout
from captioner.model.protocol import CaptionJob
from captioner.serving.continuous_batcher import ContinuousBatcher, Decoded
from tests.support.clock import FakeClock
from tests.support.fakes import ScriptedDecoding
from tests.support.waits import settle

pytestmark = pytest.mark.anyio

ROWS = 3  # every request takes 3 rows (num_beams 3)


def job(num_captions: int = 1) -> CaptionJob:
    return CaptionJob(pixel_values=None, num_captions=num_captions)  # type: ignore[arg-type]  # never looked at


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def model() -> ScriptedDecoding:
    return ScriptedDecoding()


def make(model: ScriptedDecoding, clock: FakeClock, *, max_rows: int = 6, max_queue: int = 8) -> ContinuousBatcher:
    batcher = ContinuousBatcher(
        model.start,
        rows_for=lambda j: max(ROWS, j.num_captions),
        max_rows=max_rows,
        max_queue=max_queue,
        request_timeout_s=30,
        clock=clock,
    )
    batcher.start()
    return batcher


async def test_a_request_joins_at_once_and_is_answered_when_its_captions_end(
    model: ScriptedDecoding, clock: FakeClock
) -> None:
    batcher = make(model, clock)
    first = asyncio.ensure_future(batcher(job()))
    await settle()
    assert list(model.joined) == [1]  # no batch deadline to wait for
    second = asyncio.ensure_future(batcher(job()))
    await settle()
    assert list(model.joined) == [1, 2]  # joins while the first is still decoding
    model.finish(2, "second")
    await settle()
    assert second.done() and not first.done()  # answered when its own search ends
    result = second.result()
    assert isinstance(result, Decoded) and result.captions[0].text == "second" and result.running == 2
    model.finish(1)
    assert (await first).captions[0].text == "a caption"


async def test_arrivals_beyond_the_row_bound_wait_until_rows_free_up(model: ScriptedDecoding, clock: FakeClock) -> None:
    batcher = make(model, clock, max_rows=6)
    waiting = [asyncio.ensure_future(batcher(job())) for _ in range(3)]
    await settle()
    assert list(model.joined) == [1, 2] and batcher.queue_depth == 1
    model.finish(1)
    await settle()
    assert list(model.joined) == [1, 2, 3] and batcher.queue_depth == 0
    model.finish(2)
    model.finish(3)
    await asyncio.gather(*waiting)


async def test_a_request_for_more_captions_than_beams_takes_more_rows(
    model: ScriptedDecoding, clock: FakeClock
) -> None:
    batcher = make(model, clock, max_rows=6)
    callers = [asyncio.ensure_future(batcher(job(num_captions=5))), asyncio.ensure_future(batcher(job()))]
    await settle()
    assert list(model.joined) == [1]  # 5 + 3 rows > 6
    model.finish(1)
    await settle()
    model.finish(2)
    await asyncio.gather(*callers)


async def test_a_cancelled_caller_leaves_the_running_set_and_frees_its_rows(
    model: ScriptedDecoding, clock: FakeClock
) -> None:
    batcher = make(model, clock, max_rows=6)
    callers = [asyncio.ensure_future(batcher(job())) for _ in range(3)]
    await settle()
    callers[0].cancel()
    await settle()
    assert model.left == [1]
    assert list(model.joined) == [1, 2, 3]  # the queued one took the freed rows
    model.finish(1)  # an answer that crossed the leave on its way: ignored
    model.finish(2)
    model.finish(3)
    await asyncio.gather(*callers[1:])


async def test_a_live_request_past_its_deadline_gets_504_and_leaves(model: ScriptedDecoding, clock: FakeClock) -> None:
    batcher = make(model, clock)
    slow = asyncio.ensure_future(batcher(job(), timeout_s=5))
    other = asyncio.ensure_future(batcher(job(), timeout_s=60))
    await settle()
    await clock.advance(5)
    with pytest.raises(RequestTimeout):
        await slow
    assert model.left == [1] and not other.done()
    assert batcher.stats.expired == 1


async def test_a_queued_request_past_its_deadline_never_reaches_the_model(
    model: ScriptedDecoding, clock: FakeClock
) -> None:
    batcher = make(model, clock, max_rows=3)
    live = asyncio.ensure_future(batcher(job(), timeout_s=60))
    queued = asyncio.ensure_future(batcher(job(), timeout_s=5))
    await settle()
    await clock.advance(5)
    with pytest.raises(RequestTimeout):
        await queued
    model.finish(1)
    await live
    assert list(model.joined) == [1]


async def test_the_queue_is_bounded(model: ScriptedDecoding, clock: FakeClock) -> None:
    batcher = make(model, clock, max_rows=3, max_queue=1)
    live = asyncio.ensure_future(batcher(job()))
    await settle()
    queued = batcher.submit(job())
    with pytest.raises(Overloaded):
        batcher.submit(job())
    model.finish(1)
    await live
    await settle()
    model.finish(2)
    await queued


async def test_a_failure_reaches_only_its_request_as_a_model_error(model: ScriptedDecoding, clock: FakeClock) -> None:
    batcher = make(model, clock)
    failing = asyncio.ensure_future(batcher(job()))
    fine = asyncio.ensure_future(batcher(job()))
    await settle()
    model.sink.failed(1, RuntimeError("exploded"))
    with pytest.raises(ModelError):
        await failing
    model.finish(2)
    await fine


async def test_drain_refuses_new_requests_and_finishes_the_live_ones(model: ScriptedDecoding, clock: FakeClock) -> None:
    batcher = make(model, clock, max_rows=3)
    live = asyncio.ensure_future(batcher(job()))
    queued = asyncio.ensure_future(batcher(job()))
    await settle()
    drained = asyncio.ensure_future(batcher.drain(timeout_s=30))
    await settle()
    with pytest.raises(Overloaded):
        batcher.submit(job())
    model.finish(1)
    await settle()
    model.finish(2)
    assert await drained is True
    await asyncio.gather(live, queued)
    assert model.closed
