"""The confidence cascade (serving/cascade.py): the pure rule, then a variant's service behind a first model, both
fakes (their confidences set by the test), driven directly without HTTP. The real tiny models answer over HTTP in
tests/integration/http/test_cascade.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from captioner.errors import InvalidImage
from captioner.model.protocol import Caption, CaptionJob
from captioner.observability.metrics import Metrics
from captioner.serving.cascade import ACCEPTED, ESCALATED, FIRST_UNAVAILABLE, answered, decide
from captioner.serving.service import CaptionService
from tests.support.fakes import FakeCaptioner
from tests.support.model import tiny_settings
from tests.support.service import GUARD_S

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------------------------------------- the rule


def test_a_confidence_at_or_above_the_threshold_is_accepted() -> None:
    assert decide(0.5, 0.5) == ACCEPTED
    assert decide(0.51, 0.5) == ACCEPTED
    assert decide(0.49, 0.5) == ESCALATED


def test_threshold_zero_accepts_everything_and_one_escalates_all_but_certainty() -> None:
    assert decide(1e-9, 0.0) == ACCEPTED
    assert decide(0.999, 1.0) == ESCALATED
    assert decide(1.0, 1.0) == ACCEPTED


def test_no_first_answer_is_unavailable_and_reads_as_escalated() -> None:
    assert decide(None, 0.0) == FIRST_UNAVAILABLE
    assert [answered(o) for o in (ACCEPTED, ESCALATED, FIRST_UNAVAILABLE)] == ["accepted", "escalated", "escalated"]


# ------------------------------------------------------------------------------------ a service behind a first


class ScoredFake(FakeCaptioner):
    """A fake captioner whose top caption has the confidence ``confidence``, named ``name``."""

    def __init__(self, name: str, confidence: float) -> None:
        super().__init__()
        self.name = name
        self.confidence = confidence
        self.gate = threading.Event()  # cleared by a test: the model thread waits in caption_batch until it is set
        self.gate.set()
        self.entered = threading.Event()

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        self.entered.set()
        self.gate.wait(GUARD_S)
        results = super().caption_batch(jobs)
        return [[Caption(f"{self.name}: {c.text}", self.confidence) for c in captions] for captions in results]


def services(first_confidence: float, threshold: float) -> tuple[CaptionService, CaptionService, Metrics]:
    settings = tiny_settings(batching={"max_wait_ms": 0}, cascade={"threshold": threshold})
    metrics = Metrics()
    first_settings = settings.replace("model", name="first-model", path="/nonexistent/first")
    first = CaptionService(first_settings, ScoredFake("first", first_confidence), metrics, variant="cascade-first")
    main = CaptionService(settings, ScoredFake("main", 0.9), metrics, first=first)
    first.start()
    main.start()
    return first, main, metrics


async def close(*running: CaptionService) -> None:
    for service in running:
        await service.close(GUARD_S)


def count(metrics: Metrics, outcome: str) -> float:
    return metrics.cascade.labels(outcome)._value.get()


async def test_a_confident_first_answer_is_the_answer_and_the_main_model_is_not_used() -> None:
    first, main, metrics = services(first_confidence=0.6, threshold=0.5)
    try:
        outcome = await main.caption(b"cat", 1)
        assert outcome.captions == [Caption("first: cat", 0.6)]
        assert (outcome.model, outcome.cascade, outcome.variant) == ("first-model", "accepted", "default")
        assert main.captioner.batches == []  # type: ignore[attr-defined]
        again = await main.caption(b"cat", 1)  # from the cache: the same answer, said the same way, not counted
        assert (again.cached, again.model, again.cascade) == (True, "first-model", "accepted")
        assert (count(metrics, ACCEPTED), count(metrics, ESCALATED)) == (1, 0)
    finally:
        await close(main, first)


async def test_an_unsure_first_answer_goes_on_to_the_main_model() -> None:
    first, main, metrics = services(first_confidence=0.4, threshold=0.5)
    try:
        outcome = await main.caption(b"dog", 2)
        assert [c.text for c in outcome.captions] == ["main: dog", "main: dog #2"]
        assert (outcome.model, outcome.cascade) == (main.settings.model.name, "escalated")
        assert first.captioner.batches == [["dog"]]  # type: ignore[attr-defined]
        assert (count(metrics, ACCEPTED), count(metrics, ESCALATED)) == (0, 1)
    finally:
        await close(main, first)


async def test_a_failing_or_down_first_model_escalates_instead_of_failing() -> None:
    first, main, metrics = services(first_confidence=0.9, threshold=0.5)
    try:
        first.captioner.raise_when = lambda texts: RuntimeError("first model exploded")  # type: ignore[attr-defined]
        outcome = await main.caption(b"bird", 1)
        assert (outcome.captions[0].text, outcome.cascade) == ("main: bird", "escalated")
        await first.close(GUARD_S)  # stopped: its batcher refuses (503), which escalates too
        assert (await main.caption(b"fish", 1)).cascade == "escalated"
        assert (count(metrics, FIRST_UNAVAILABLE), count(metrics, ESCALATED), count(metrics, ACCEPTED)) == (2, 0, 0)
    finally:
        await close(main)


async def test_a_bad_image_fails_in_the_first_model_as_it_would_without_the_cascade() -> None:
    first, main, _ = services(first_confidence=0.9, threshold=0.5)
    try:
        first.captioner.preprocess_error = InvalidImage("not an image")  # type: ignore[attr-defined]
        with pytest.raises(InvalidImage):
            await main.caption(b"junk", 1)
        assert main.captioner.batches == []  # type: ignore[attr-defined]
    finally:
        await close(main, first)


async def test_the_cache_key_names_the_cascade_and_its_threshold() -> None:
    plain = CaptionService(tiny_settings(), FakeCaptioner(), Metrics())
    keys = {plain.key_for("ab" * 32, 1)}
    for threshold in (0.3, 0.5):
        first, main, _ = services(first_confidence=0.9, threshold=threshold)
        keys.add(main.key_for("ab" * 32, 1))
        await close(main, first)
    await close(plain)
    assert len(keys) == 3  # no cascade, and each threshold: three different answers, never served for another


async def test_a_drain_lets_an_escalation_in_the_first_model_reach_the_main_model() -> None:
    first, main, _ = services(first_confidence=0.1, threshold=0.5)
    fake = first.captioner
    assert isinstance(fake, ScoredFake)
    fake.gate.clear()
    try:
        request = asyncio.create_task(main.caption(b"owl", 1))
        assert await asyncio.to_thread(fake.entered.wait, GUARD_S)  # the first model holds it
        closing = asyncio.create_task(main.close(GUARD_S))
        await asyncio.sleep(0.05)
        assert not closing.done()  # waits for the request still in the cascade
        fake.gate.set()
        outcome = await asyncio.wait_for(request, GUARD_S)
        assert (outcome.captions[0].text, outcome.cascade) == ("main: owl", "escalated")
        assert await closing
    finally:
        fake.gate.set()
        await close(first)


def test_the_shared_cache_keeps_whose_answer_it_is() -> None:
    from captioner.serving.service import _Computed, _decode, _encode

    stored = _decode(_encode(_Computed([Caption("a cat", 0.7)], None, model="student", cascade="accepted")))
    assert (stored.model, stored.cascade, stored.captions) == ("student", "accepted", [Caption("a cat", 0.7)])
    plain = _decode(_encode(_Computed([Caption("a cat", 0.7)], None)))  # as written before the cascade existed
    assert (plain.model, plain.cascade) == ("", None)
