"""One image's returned sequences as the captions the API answers with (static and continuous batching alike)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from captioner.model.protocol import Caption

# Confidence never reaches 0: the contract says (0, 1], and a log-likelihood of -inf is still "very unsure".
_MIN_CONFIDENCE = 1e-12


def rank_captions(texts: Sequence[str], scores: Sequence[float]) -> list[Caption]:
    """One image's returned sequences as captions: distinct non-empty texts (spaces normalised), best first, each
    with ``exp(score)`` as its confidence."""
    seen: dict[str, float] = {}
    for raw, score in zip(texts, scores, strict=True):
        text = " ".join(raw.split())
        if text and text not in seen:
            seen[text] = max(_MIN_CONFIDENCE, min(1.0, math.exp(score)))
    ranked = sorted(seen.items(), key=lambda item: item[1], reverse=True)
    return [Caption(text, confidence) for text, confidence in ranked]
