"""The card (``training.json``) of a model ``captioner optimize`` wrote: what was done to which model.

The same file name and ``parent`` entry as ``captioner train``'s card, so the registry records the source model as
the parent (by weights hash, as for a trained model) without knowing about optimisation; ``optimization`` says
what was done: the method, its settings, and the parameter counts before and after. A pruned model that was then
fine-tuned keeps the fine-tuning run's card (steps, loss curve, the teacher as ``distilled_from``) with its
``parent`` set back to the source model: the intermediate pruned folder was temporary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from captioner.model.weights import is_untrained
from captioner.registry.store import CARD, weights_sha256
from captioner.tools.train.model_card import write_card


def model_entry(folder: Path) -> dict[str, Any]:
    """A model folder as a card names it: path, weights hash, whether its weights are random."""
    return {"path": str(folder), "weights_sha256": weights_sha256(folder), "untrained": is_untrained(folder)}


def write_optimization_card(out: Path, source: Path, optimization: dict[str, Any]) -> Path:
    """Write OUT's card; a card already there (the fine-tuning run's) is kept and completed."""
    path = out / CARD
    card: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for stamp in ("card_version", "created", "code_revision"):  # write_card stamps them afresh
        card.pop(stamp, None)
    card["model"] = {"path": str(out), "weights_sha256": weights_sha256(out)}
    card["parent"] = model_entry(source)
    card["optimization"] = optimization
    return write_card(out, card)
