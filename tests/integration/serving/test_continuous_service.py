"""A caller that goes away mid-decode, through the whole service (``batching.mode: continuous``, the tiny BLIP on
a thread): its image leaves the running set, the others are answered with static mode's captions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from captioner.model.blip import BlipCaptioner
from captioner.model.protocol import CaptionJob
from captioner.observability.metrics import Metrics
from captioner.serving.service import CaptionService
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.waits import async_wait_for

pytestmark = pytest.mark.anyio

# Long searches, so that the requests are still decoding when one caller leaves.
GENERATION = {"num_beams": 4, "min_length": 200, "max_length": 200}


async def test_a_caller_leaving_mid_decode_frees_its_rows_and_the_others_are_unchanged(tiny_model_dir: Path) -> None:
    settings = tiny_settings(
        tiny_model_dir, batching={"mode": "continuous"}, cache={"max_entries": 0}, generation=GENERATION
    )
    model = BlipCaptioner(tiny_model_dir, settings.model, settings.generation, settings.limits.max_pixels)
    images = [photo(800 + i) for i in range(4)]
    want = model.caption_batch([CaptionJob.of(model.preprocess(data)) for data in images])
    metrics = Metrics()
    service = CaptionService(settings, model, metrics)
    service.start()
    try:
        calls = [asyncio.ensure_future(service.caption(data, 1)) for data in images]
        steps = metrics.decode_steps.labels("default")
        await async_wait_for(lambda: steps._value.get() > 0, "decoding to be under way")
        assert not any(call.done() for call in calls)
        calls[1].cancel()
        answers = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await service.close(60)
    assert isinstance(answers[1], asyncio.CancelledError)
    assert service.batcher.stats.cancelled == 1
    for index in (0, 2, 3):
        outcome = answers[index]
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.captions[0].text == want[index][0].text
        assert outcome.captions[0].confidence == pytest.approx(want[index][0].confidence, abs=1e-5)
    assert metrics.decode_rows.labels("default")._value.get() == 0
