"""The cascade's threshold, chosen from measured figures: a pure function, no IO (the command measures, this decides).

For one annotated set, each image has the first model's top-caption confidence and the CIDEr of the first and of the
second model's caption (per image: pycocoevalcap's CIDEr-D of a set is the mean of its images' scores, and its
document frequencies come from the references alone, so any mix of the two models' captions scores as the mean
of the chosen captions' per-image scores). With the model time per image of each:

- a threshold ``t`` escalates the images whose confidence is ``< t`` (the server's rule, serving/cascade.py): they
  take the second model's caption and cost first + second; the others keep the first's and cost first only;
- ``escalated_share`` is the share escalated; ``model_time_saved`` is ``1 - (first_s + share * second_s) /
  second_s``, against the second model alone (negative when the cascade costs more);
- the thresholds tried are 0 (escalate nothing), the midpoints between consecutive distinct confidences (each
  split the set allows, placed away from the confidences seen, so a nearby confidence on new images falls the
  same way), and 1 (escalate everything below certainty);
- a threshold qualifies when its CIDEr is no more than ``max_cider_drop`` (relative) below the second model's
  alone: ``cider >= cider_second * (1 - max_cider_drop)``;
- the choice is the qualifying threshold that saves the most model time; on a tie, the higher CIDEr, then the
  higher threshold (the safer side). When none qualifies (only possible when some confidence is exactly 1),
  the choice is 1.0: escalate everything the first model is not certain of.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFigures:
    confidence: float  # the first model's top caption's
    cider_first: float  # CIDEr of the first model's caption for this image
    cider_second: float


@dataclass(frozen=True)
class Row:
    threshold: float
    escalated_share: float
    model_time_saved: float
    cider: float
    qualifies: bool


@dataclass(frozen=True)
class Calibration:
    threshold: float
    escalated_share: float
    model_time_saved: float
    cider_first: float
    cider_second: float
    cider_cascade: float
    rows: tuple[Row, ...]


def candidate_thresholds(confidences: Sequence[float]) -> list[float]:
    """0, the midpoints between consecutive distinct confidences, and 1 (see the module's docstring)."""
    distinct = sorted(set(confidences))
    midpoints = [(low + high) / 2 for low, high in itertools.pairwise(distinct)]
    return sorted({0.0, *midpoints, 1.0})


def calibrate(
    images: Sequence[ImageFigures], *, first_s: float, second_s: float, max_cider_drop: float = 0.03
) -> Calibration:
    """Sweep the thresholds over ``images`` and choose one; ``first_s`` and ``second_s`` are each model's time
    per image. Raises ``ValueError`` for an empty set or a second model time that is not positive."""
    if not images:
        raise ValueError("no image to calibrate on")
    if second_s <= 0 or first_s < 0:
        raise ValueError("model times must be positive")
    count = len(images)
    cider_first = sum(i.cider_first for i in images) / count
    cider_second = sum(i.cider_second for i in images) / count
    floor = cider_second * (1 - max_cider_drop)
    rows = []
    for threshold in candidate_thresholds([i.confidence for i in images]):
        escalated = [i.confidence < threshold for i in images]
        share = sum(escalated) / count
        cider = sum(i.cider_second if up else i.cider_first for i, up in zip(images, escalated, strict=True)) / count
        saved = 1 - (first_s + share * second_s) / second_s
        rows.append(Row(threshold, share, saved, cider, qualifies=cider >= floor - 1e-12))
    qualifying = [row for row in rows if row.qualifies]
    # None qualifying: threshold 1.0 (the last row), escalating everything below certainty.
    best = max(qualifying, key=lambda row: (row.model_time_saved, row.cider, row.threshold)) if qualifying else rows[-1]
    return Calibration(
        threshold=best.threshold,
        escalated_share=best.escalated_share,
        model_time_saved=best.model_time_saved,
        cider_first=cider_first,
        cider_second=cider_second,
        cider_cascade=best.cider,
        rows=tuple(rows),
    )
