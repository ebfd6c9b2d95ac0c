"""What the serving layer needs from a model: ``Captioner``, and the plain data it passes in and out.

``BlipCaptioner`` (blip.py) and ``ProcessCaptioner`` (process_worker.py) implement it; unit tests may fake it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from captioner.model.preprocessing import PreparedImage


@dataclass(frozen=True)
class Caption:
    text: str
    confidence: float


@dataclass(frozen=True)
class CaptionJob:
    """One image's share of a batch: its tensor and how many distinct captions it wants."""

    pixel_values: torch.Tensor
    num_captions: int = 1


class Captioner(Protocol):
    """What the server needs from a model. ``BlipCaptioner`` is the real one; tests may fake it."""

    name: str
    revision: str
    device: str
    dtype: str
    untrained: bool

    def preprocess(self, data: bytes) -> PreparedImage: ...

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]: ...

    def warm_up(self) -> None: ...
