"""``CaptionOutcome``: one image's captions as the caption use case returns them, and their wire form.

The wire form (``outcome_body``) is the contract's 200 body. Sync HTTP renders it and the job worker stores it as
a job's result, so a job's answer and a synchronous one are the same bytes; ``outcome_from_body`` reads a stored
result back (an ``api``-role replica answers a relayed request from its job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from captioner.config import DEFAULT_VARIANT
from captioner.model.protocol import Caption

if TYPE_CHECKING:  # a type only: an api-role replica never imports the image decoder (or torch)
    from captioner.model.preprocessing import ImageInfo


@dataclass(frozen=True)
class CaptionOutcome:
    captions: list[Caption]
    cached: bool
    image_sha256: str
    info: ImageInfo | None  # None on a cache hit, or when the image was captioned on another replica
    batch_size: int | None = None  # images in the generate() call that captioned it; None on a cache hit
    variant: str = DEFAULT_VARIANT  # the A/B variant that answered
    model: str = ""  # the name of the model that produced the captions
    cascade: str | None = None  # behind a confidence cascade: "accepted" or "escalated" (serving/cascade.py)


def outcome_body(outcome: CaptionOutcome, default_model: str) -> dict[str, Any]:
    """The contract's success body; ``default_model`` names the model when the outcome doesn't."""
    body = {
        "status": "success",
        "captions": [{"text": c.text, "confidence": c.confidence} for c in outcome.captions],
        "model": outcome.model or default_model,
        "variant": outcome.variant,
        "cached": outcome.cached,
        "image_sha256": outcome.image_sha256,
    }
    if outcome.cascade is not None:
        body["cascade"] = outcome.cascade
    return body


def outcome_from_body(body: Mapping[str, Any]) -> CaptionOutcome:
    """The outcome a success body describes (a job's stored result)."""
    return CaptionOutcome(
        captions=[Caption(str(c["text"]), float(c["confidence"])) for c in body["captions"]],
        cached=bool(body["cached"]),
        image_sha256=str(body["image_sha256"]),
        info=None,
        variant=str(body.get("variant", DEFAULT_VARIANT)),
        model=str(body.get("model", "")),
        cascade=str(body["cascade"]) if body.get("cascade") is not None else None,
    )
