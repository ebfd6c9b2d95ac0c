"""CUDA out-of-memory on the tiny BLIP: the batch is split until it fits, and a single image that still does not
fit fails with model_error (generate is made to raise; the model and the service are the real ones)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from captioner.model.blip import BlipCaptioner
from captioner.model.protocol import CaptionJob
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.service import assert_model_errors, caption_all, oom, service_for, texts_of

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def blip(tiny_model_dir: Path) -> BlipCaptioner:
    settings = tiny_settings(tiny_model_dir)
    return BlipCaptioner(Path(settings.model.path), settings.model, settings.generation, settings.limits.max_pixels)


@pytest.fixture
def generate_sizes(blip: BlipCaptioner) -> Iterator[Callable[[int | None], list[int]]]:
    """Make the real model's ``generate`` raise CUDA OOM above a batch size; yields a setter returning the log."""
    model: Any = blip._model
    original = model.generate
    sizes: list[int] = []
    limit: list[int | None] = [None]

    def generate(*args: Any, **kwargs: Any) -> Any:
        batch = int(kwargs["pixel_values"].shape[0])
        sizes.append(batch)
        if limit[0] is not None and batch > limit[0]:
            raise oom()
        return original(*args, **kwargs)

    def set_limit(value: int | None) -> list[int]:
        limit[0] = value
        return sizes

    model.generate = generate
    try:
        yield set_limit
    finally:
        del model.generate


async def test_cuda_oom_splits_the_batch_and_every_request_succeeds(
    blip: BlipCaptioner, generate_sizes: Callable[[int | None], list[int]], tiny_model_dir: Path
) -> None:
    images = [photo(800 + i) for i in range(4)]
    expected = [blip.caption_batch([CaptionJob(blip.preprocess(d).pixel_values)])[0][0].text for d in images]
    sizes = generate_sizes(2)
    sizes.clear()
    service = service_for(blip, 4)
    service.start()
    try:
        results = await caption_all(service, images)
    finally:
        await service.close(5)
    assert texts_of(results) == expected  # each request got its own image's caption
    assert sizes == [4, 2, 2]


async def test_cuda_oom_at_size_one_fails_the_batch_with_model_error(
    blip: BlipCaptioner, generate_sizes: Callable[[int | None], list[int]], tiny_model_dir: Path
) -> None:
    sizes = generate_sizes(0)
    sizes.clear()
    service = service_for(blip, 4)
    service.start()
    try:
        assert_model_errors(await caption_all(service, [photo(900 + i) for i in range(4)]))
        assert sizes == [4, 2, 1]
        generate_sizes(None)  # the memory is back: the next batch works
        results = await caption_all(service, [photo(910 + i) for i in range(4)])
        assert all(r.captions for r in results)
    finally:
        await service.close(5)
