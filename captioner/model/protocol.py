"""What the serving layer needs from a model: ``Captioner``, and the plain data it passes in and out.

``BlipCaptioner`` (blip.py) and ``ProcessCaptioner`` (process_worker.py) implement it; unit tests may fake it.
A model that can go down and come back by itself (``ProcessCaptioner``) also has ``watch(listener)``, and
reports to that ``ModelListener``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # types only: ``Caption`` is read where torch is never imported (an api-role replica)
    import torch

    from captioner.model.preprocessing import EncodedJpeg, PreparedImage


@dataclass(frozen=True)
class Caption:
    text: str
    confidence: float


@dataclass(frozen=True)
class CaptionJob:
    """One image's share of a batch: its tensor and how many distinct captions it wants."""

    pixel_values: torch.Tensor  # empty when ``jpeg`` is set (``model.jpeg_decode: device``)
    num_captions: int = 1
    jpeg: EncodedJpeg | None = None

    @classmethod
    def of(cls, prepared: PreparedImage, num_captions: int = 1) -> CaptionJob:
        """The job for an image as ``Captioner.preprocess`` left it (decoded, or a JPEG still encoded)."""
        return cls(prepared.pixel_values, num_captions, prepared.jpeg)


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


class ModelListener(Protocol):
    """What a self-healing model reports. Called from any thread (``ProcessCaptioner``'s supervisor)."""

    def model_down(self, reason: str, retry_in_s: float) -> None:
        """The model can't take work; it will try to come back in about ``retry_in_s`` seconds."""

    def model_up(self) -> None:
        """The model is back (respawned and warmed up)."""

    def model_failed(self, reason: str) -> None:
        """The model can't come back in this process: the replica must be restarted."""

    def model_stalled(self, reason: str, retry_in_s: float) -> None:
        """The watchdog found the model stuck with a batch in flight (``health.watchdog_s``): down, and killed."""


@dataclass(frozen=True)
class DecodeProgress:
    """The decode loop's counters, sent with its answers (``captioner_decode_rows``, ``..._steps_total``)."""

    rows: int  # sequences (beams) in the running set now
    steps: int  # decoding steps since the loop started


class DecodeSink(Protocol):
    """Where continuous decoding (``batching.mode: continuous``) reports; called from the decoding thread (or the
    thread that reads the model process), never from the event loop."""

    def finished(self, request_id: int, captions: list[Caption], first_token_s: float) -> None:
        """A request's captions; ``first_token_s``: from its arrival at the decoder to its first token."""

    def failed(self, request_id: int, error: BaseException) -> None: ...

    def progress(self, progress: DecodeProgress) -> None: ...


class StepDecoding(Protocol):
    """The model side of continuous batching: images join and leave a running set of decoding sequences.
    ``join`` and ``leave`` never block; each joined request gets exactly one ``finished`` or ``failed``, unless it
    left first (then none)."""

    def join(self, request_id: int, job: CaptionJob) -> None: ...

    def leave(self, request_id: int) -> None: ...

    def close(self) -> None:
        """Stop decoding; requests still live fail."""
