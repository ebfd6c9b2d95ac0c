"""The confidence cascade's rule: which answer a request gets when a first (small) model screens every cache miss.

With ``cascade.enabled`` each variant's ``CaptionService`` (service.py) hands a cache miss to the first model's
service (its own batcher, model process and health, shared by every variant) and then decides with ``decide``:

- the first model's top caption has a confidence >= ``cascade.threshold``: its captions are the answer
  (``accepted``; ``model`` names the first model);
- below it: the image goes on to the variant's own (main) model (``escalated``);
- the first model gave nothing (down, respawning, queue full, failed, timed out): the main model answers
  (``first_unavailable``; the answer says ``escalated``, the metric tells them apart). A bad image (a 4xx) is the
  caller's, and fails the request as it would without the cascade.

So threshold 0 accepts every first answer, 1 escalates nearly every image (a confidence is in (0, 1]; only 1.0
exactly is accepted). The answer's ``cascade`` field says ``accepted`` or ``escalated``; the counter
``captioner_cascade_total{outcome}`` counts all three outcomes, once per computed answer (a cache hit repeats the
stored answer, ``cascade`` field and model included, without counting again).

The cache key of a variant behind a cascade includes ``key_part`` (the first model and the threshold): a cascade
answer is never served for a request without the cascade, nor the other way round, nor across thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

ACCEPTED = "accepted"
ESCALATED = "escalated"
FIRST_UNAVAILABLE = "first_unavailable"
OUTCOMES = (ACCEPTED, ESCALATED, FIRST_UNAVAILABLE)
FIRST_VARIANT = "cascade-first"  # the first model's label in the per-variant series (batch sizes, inference time)

Answered = Literal["accepted", "escalated"]  # what a 200 body's `cascade` field says


def decide(top_confidence: float | None, threshold: float) -> str:
    """``accepted`` when the first model's top confidence reaches ``threshold``, ``escalated`` below it, and
    ``first_unavailable`` when there is none (the first model gave no answer)."""
    if top_confidence is None:
        return FIRST_UNAVAILABLE
    return ACCEPTED if top_confidence >= threshold else ESCALATED


def answered(outcome: str) -> Answered:
    """The 200 body's ``cascade`` field for an outcome: a first model that gave nothing escalated too."""
    return "accepted" if outcome == ACCEPTED else "escalated"


def key_part(first_model: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """What the cascade adds to a variant's cache key."""
    return {"first": dict(first_model), "threshold": threshold}
