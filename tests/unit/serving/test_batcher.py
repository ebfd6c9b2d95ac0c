from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from captioner.errors import ModelError, Overloaded, RequestTimeout
from captioner.serving.batcher import Batcher, BatchInfo, should_flush
from tests.support.clock import FakeClock
from tests.support.fakes import GatedModel
from tests.support.waits import settle

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def model() -> GatedModel:
    return GatedModel()


def make_batcher(model: GatedModel, clock: FakeClock, **kwargs: float) -> Batcher[str, str]:
    options: dict[str, float] = {"max_batch_size": 4, "max_wait_s": 0.1, "max_queue": 16, "request_timeout_s": 30}
    options.update(kwargs)
    batcher: Batcher[str, str] = Batcher(
        model,
        max_batch_size=int(options["max_batch_size"]),
        max_wait_s=options["max_wait_s"],
        max_queue=int(options["max_queue"]),
        request_timeout_s=options["request_timeout_s"],
        clock=clock,
    )
    batcher.start()
    return batcher


@pytest.fixture
async def batcher(model: GatedModel, clock: FakeClock) -> AsyncIterator[Batcher[str, str]]:
    b = make_batcher(model, clock)
    yield b
    model.gate.set()
    await b.drain(1)


def test_should_flush_is_pure_and_follows_the_rules() -> None:
    rules = {"max_batch_size": 4, "max_wait_s": 0.1}
    assert not should_flush(queued=0, first_arrival=0, now=5, **rules)
    assert not should_flush(queued=3, first_arrival=1.0, now=1.05, **rules)
    assert should_flush(queued=4, first_arrival=1.0, now=1.0, **rules)
    assert should_flush(queued=1, first_arrival=1.0, now=1.1, **rules)


async def test_flushes_at_once_when_the_batch_is_full(batcher: Batcher[str, str], model: GatedModel) -> None:
    futures = [batcher.submit(f"img{i}") for i in range(4)]
    await settle()
    assert model.batches == [["img0", "img1", "img2", "img3"]]
    model.gate.set()
    await settle()
    assert [f.result() for f in futures] == [f"caption of img{i}" for i in range(4)]


async def test_flushes_at_the_deadline_counted_from_the_first_arrival(
    batcher: Batcher[str, str], model: GatedModel, clock: FakeClock
) -> None:
    batcher.submit("first")
    await clock.advance(0.06)
    batcher.submit("second")  # arrives late: must not restart the clock
    await clock.advance(0.039)
    assert model.batches == []
    await clock.advance(0.001)  # 0.1 s after the first arrival
    assert model.batches == [["first", "second"]]


async def test_request_arriving_while_a_batch_runs_goes_into_the_next_batch(
    batcher: Batcher[str, str], model: GatedModel, clock: FakeClock
) -> None:
    first = [batcher.submit(f"a{i}") for i in range(4)]
    await settle()
    late = batcher.submit("late")
    await clock.advance(0.5)  # its deadline passes while the model is busy
    assert model.batches == [["a0", "a1", "a2", "a3"]]
    batcher.submit("later")  # joins the waiting batch, which may grow until the model is free
    model.gate.set()
    await settle()
    assert all(f.done() for f in first)
    assert model.batches == [["a0", "a1", "a2", "a3"], ["late", "later"]]
    assert late.result() == "caption of late"


async def test_a_full_batch_waits_at_the_model_while_one_runs_and_only_one_does(
    model: GatedModel, clock: FakeClock
) -> None:
    batcher = make_batcher(model, clock, max_batch_size=2)
    running = [batcher.submit(f"a{i}") for i in range(2)]
    await settle()
    ahead = [batcher.submit(f"b{i}") for i in range(2)]  # full: it can't grow, so it goes to the model now
    await settle()
    assert model.batches == [["a0", "a1"], ["b0", "b1"]]
    assert batcher.busy
    later = [batcher.submit(f"c{i}") for i in range(3)]  # a full batch again, but one already waits: it queues
    await clock.advance(0.5)  # past its deadline too: still queued, and growing
    assert model.batches == [["a0", "a1"], ["b0", "b1"]]
    assert batcher.queue_depth == 3
    model.gate.set()
    await settle()
    assert model.batches == [["a0", "a1"], ["b0", "b1"], ["c0", "c1"], ["c2"]]
    assert [f.result() for f in running + ahead + later] == [f"caption of {x}" for x in
                                                            ("a0", "a1", "b0", "b1", "c0", "c1", "c2")]  # fmt: skip
    assert not batcher.busy
    await batcher.drain(1)


async def test_a_partial_batch_waits_for_the_model_even_past_its_deadline(model: GatedModel, clock: FakeClock) -> None:
    batcher = make_batcher(model, clock, max_batch_size=4)
    batcher.submit("running")
    await clock.advance(0.1)
    assert model.batches == [["running"]]
    batcher.submit("waits")
    await clock.advance(1.0)
    assert model.batches == [["running"]]  # not full: it keeps the chance to grow until the model is free
    model.gate.set()
    await settle()
    assert model.batches == [["running"], ["waits"]]
    await batcher.drain(1)


async def test_full_queue_raises_overloaded_with_retry_after(model: GatedModel, clock: FakeClock) -> None:
    batcher = make_batcher(model, clock, max_batch_size=1, max_queue=2)
    batcher.submit("running")
    await settle()  # dispatched: the model is busy with it
    batcher.submit("q1")
    batcher.submit("q2")
    with pytest.raises(Overloaded) as refused:
        batcher.submit("q3")
    assert refused.value.status_code == 503
    assert int(refused.value.headers["Retry-After"]) >= 1
    model.gate.set()
    await batcher.drain(1)


async def test_expired_request_is_dropped_before_inference(model: GatedModel, clock: FakeClock) -> None:
    batcher = make_batcher(model, clock, max_batch_size=1, request_timeout_s=1.0)
    batcher.submit("running")
    await settle()
    expired = batcher.submit("expires")
    await clock.advance(2.0)
    model.gate.set()
    await settle()
    with pytest.raises(RequestTimeout):
        expired.result()
    assert model.batches == [["running"]]  # the expired request never reached the model
    assert batcher.stats.expired == 1


async def test_cancelled_request_never_reaches_the_model(
    batcher: Batcher[str, str], model: GatedModel, clock: FakeClock
) -> None:
    caller = asyncio.ensure_future(batcher("abandoned"))
    await settle()
    assert batcher.queue_depth == 1
    caller.cancel()
    await settle()
    assert batcher.queue_depth == 0  # dropped at once: it neither holds a queue slot nor waits for an arrival
    assert batcher.stats.cancelled == 1
    batcher.submit("kept")
    await clock.advance(0.1)
    assert model.batches == [["kept"]]
    assert batcher.stats.cancelled == 1


async def test_an_exception_fails_only_its_own_batch(
    batcher: Batcher[str, str], model: GatedModel, clock: FakeClock
) -> None:
    model.fail_when = "poison"
    model.gate.set()
    bad = [batcher.submit(x) for x in ("poison", "innocent", "b3", "b4")]
    await settle()
    for future in bad:
        with pytest.raises(ModelError):
            future.result()
    good = batcher.submit("next")
    await clock.advance(0.1)
    assert good.result() == "caption of next"


async def test_result_count_mismatch_is_an_error_for_the_whole_batch(
    batcher: Batcher[str, str], model: GatedModel
) -> None:
    model.drop_one = True
    model.gate.set()
    futures = [batcher.submit(f"x{i}") for i in range(4)]
    await settle()
    for future in futures:
        with pytest.raises(ModelError, match="3 results for a batch of 4"):
            future.result()


async def test_drain_finishes_accepted_work_and_refuses_new(batcher: Batcher[str, str], model: GatedModel) -> None:
    accepted = batcher.submit("accepted")
    drain = asyncio.ensure_future(batcher.drain(5))
    await settle()  # draining flushes at once: no need to wait for the deadline
    with pytest.raises(Overloaded):
        batcher.submit("too late")
    model.gate.set()
    assert await drain is True
    assert accepted.result() == "caption of accepted"


async def test_observer_sees_each_batch(model: GatedModel, clock: FakeClock) -> None:
    seen: list[BatchInfo] = []
    batcher: Batcher[str, str] = Batcher(
        model, max_batch_size=2, max_wait_s=0.1, max_queue=8, clock=clock, on_batch=seen.append
    )
    batcher.start()
    model.gate.set()
    batcher.submit("a")
    await clock.advance(0.25)
    assert [(b.size, b.waited_s) for b in seen] == [(1, 0.25)]
    await batcher.drain(1)


async def test_expedite_dispatches_the_queue_without_waiting_for_the_deadline(
    model: GatedModel, clock: FakeClock
) -> None:
    batcher = make_batcher(model, clock, max_wait_s=10.0)
    first = batcher.submit("first")
    await settle()
    assert model.batches == []  # waiting for 3 more, or 10 s
    batcher.expedite()
    await settle()
    assert model.batches == [["first"]]  # at once: the clock has not moved
    model.gate.set()
    await settle()
    assert first.result() == "caption of first"
    late = batcher.submit("late")  # still accepted while expedited, and dispatched at once
    await settle()
    assert model.batches[-1] == ["late"]
    await settle()
    assert late.result() == "caption of late"
    await batcher.drain(1)
