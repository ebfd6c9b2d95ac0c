"""Parity: continuous batching (captioner/model/decode_engine.py) gives the captions static batching gives
(``BlipCaptioner.caption_batch``, i.e. transformers' ``generate``), on the real tiny BLIP (random weights: parity
needs no quality), with images joining while others decode and one leaving mid-decode.

Tolerance: the same captions in the same order (top caption included), confidences within ``CONFIDENCE_TOL``
(absolute). The decoder's maths is the same, but the batch's shape differs (rows of other images, left padding),
so float sums can round differently; measured differences are below 1e-6.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from captioner.model import decode_engine
from captioner.model.blip import BlipCaptioner
from captioner.model.decode_engine import Answer, DecodeEngine, DecodeRequest
from captioner.model.protocol import Caption, CaptionJob, DecodeProgress
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.waits import wait_for

CONFIDENCE_TOL = 1e-5
IMAGES = 8


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def captioner(model_dir: Path, **generation: Any) -> BlipCaptioner:
    settings = tiny_settings(model_dir, generation=generation)
    return BlipCaptioner(model_dir, settings.model, settings.generation, settings.limits.max_pixels)


def jobs_for(model: BlipCaptioner, counts: list[int]) -> list[CaptionJob]:
    return [CaptionJob.of(model.preprocess(photo(40 + i)), n) for i, n in enumerate(counts)]


def assert_same(static: list[Caption], continuous: list[Caption] | None) -> None:
    assert continuous is not None
    assert [c.text for c in continuous] == [c.text for c in static]
    for a, b in zip(static, continuous, strict=True):
        assert abs(a.confidence - b.confidence) <= CONFIDENCE_TOL, (a, b)


class Collected:
    def __init__(self) -> None:
        self.captions: dict[int, list[Caption]] = {}

    def take(self, answers: list[Answer]) -> None:
        for answer in answers:
            assert answer.error is None, answer.error
            assert answer.request_id not in self.captions
            self.captions[answer.request_id] = answer.captions or []


def run_staggered(engine: DecodeEngine, jobs: list[CaptionJob], *, leaving: int | None = None) -> Collected:
    """Three images start; after three steps the rest join; ``leaving`` leaves two steps later."""
    got = Collected()
    got.take(engine.admit([DecodeRequest(i, jobs[i]) for i in range(3)]))
    for _ in range(3):
        got.take(engine.step())
    assert not engine.idle, "the first images ended before the others joined: not a mid-decode join"
    got.take(engine.admit([DecodeRequest(i, jobs[i]) for i in range(3, len(jobs))]))
    for step in range(100):
        if engine.idle:
            break
        if step == 2 and leaving is not None:
            assert leaving in engine.live_ids()
            rows = engine.rows
            engine.leave({leaving})
            assert engine.rows < rows
        got.take(engine.step())
    assert engine.idle
    return got


GENERATIONS = {
    "default": {},
    "greedy": {"num_beams": 1},
    "repetition_penalty": {"repetition_penalty": 1.5},
    "length_penalty_min_length": {"length_penalty": 0.5, "min_length": 9},
    "two_beams_more_captions": {"num_beams": 2},
}


@pytest.mark.parametrize("name", list(GENERATIONS))
def test_staggered_continuous_decoding_gives_static_batchings_captions(tiny_model_dir: Path, name: str) -> None:
    model = captioner(tiny_model_dir, **GENERATIONS[name])
    counts = [1, 1, 2, 1, 3, 1, 1, 2][:IMAGES]
    jobs = jobs_for(model, counts)
    static = model.caption_batch(jobs)
    got = run_staggered(DecodeEngine(model), jobs)
    for index in range(IMAGES):
        assert_same(static[index], got.captions[index])


def test_an_image_short_of_distinct_captions_is_searched_again_wider_as_in_static_mode(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One generated token and five captions wanted: some images' beams end at once (the end token decodes to
    # nothing), leaving fewer than five distinct captions, so both modes search those images again, wider.
    model = captioner(tiny_model_dir, max_length=5, min_length=0, max_num_captions=5)
    widened: list[int] = []
    original = decode_engine._own_keys
    monkeypatch.setattr(decode_engine, "_own_keys", lambda lives: widened.append(len(lives)) or original(lives))
    jobs = jobs_for(model, [5] * 12)
    static = model.caption_batch(jobs)
    engine = DecodeEngine(model)
    got = Collected()
    got.take(engine.admit([DecodeRequest(i, job) for i, job in enumerate(jobs)]))
    while not engine.idle:
        got.take(engine.step())
    assert widened, "no image needed a wider search: this case no longer covers it"
    for index in range(len(jobs)):
        assert_same(static[index], got.captions[index])


def test_an_image_leaving_mid_decode_gets_no_answer_and_the_others_are_unchanged(tiny_model_dir: Path) -> None:
    model = captioner(tiny_model_dir)
    jobs = jobs_for(model, [1] * IMAGES)
    static = model.caption_batch(jobs)
    got = run_staggered(DecodeEngine(model), jobs, leaving=4)
    assert 4 not in got.captions
    for index in set(range(IMAGES)) - {4}:
        assert_same(static[index], got.captions[index])


def test_the_decode_thread_answers_joins_that_arrive_while_it_decodes(tiny_model_dir: Path) -> None:
    model = captioner(tiny_model_dir)
    jobs = jobs_for(model, [1, 2, 1, 1, 3, 1])
    static = model.caption_batch(jobs)
    collected: dict[int, list[Caption]] = {}
    progress: list[DecodeProgress] = []
    lock = threading.Lock()

    class _Sink:
        def finished(self, request_id: int, captions: list[Caption], first_token_s: float) -> None:
            with lock:
                collected[request_id] = captions

        def failed(self, request_id: int, error: BaseException) -> None:
            raise AssertionError(f"request {request_id} failed: {error!r}")

        def progress(self, report: DecodeProgress) -> None:
            progress.append(report)

    decoding = model.start_decoding(_Sink())
    try:
        for index in range(3):
            decoding.join(index, jobs[index])
        wait_for(lambda: progress and progress[-1].steps > 0, "the first steps")
        for index in range(3, len(jobs)):
            decoding.join(index, jobs[index])
        wait_for(lambda: len(collected) == len(jobs), "every answer")
    finally:
        decoding.close()
    for index, captions in collected.items():
        assert_same(static[index], captions)
    wait_for(lambda: progress[-1].rows == 0, "the running set to empty")
