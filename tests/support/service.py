"""The caption service driven directly (no HTTP), for the fault tests: a service around any captioner (a fake or
the tiny BLIP), concurrent captions whose failures are kept as results, and the CUDA errors injected."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from captioner.errors import ModelError
from captioner.observability.metrics import Metrics
from captioner.serving.service import CaptionService
from tests.support.model import tiny_settings

# Long enough that a batch only ever flushes because it is full: batches are formed deterministically.
NEVER_MS = 600_000
GUARD_S = 30  # a wall-clock bound on awaits that would hang forever if a future were left unresolved


def oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def service_for(captioner: Any, batch_size: int, **batching: Any) -> CaptionService:
    """A service that caches nothing and flushes only full batches of ``batch_size``."""
    settings = tiny_settings(
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
