"""Model folders for ``captioner optimize``: what OUT takes from the source folder, and a model's size."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from captioner.model.folder_quantization import QUANTIZATION_FILE
from captioner.registry.store import CARD

# Not carried from the source folder into OUT: the source's own card and labels, training leftovers, and (for a
# pruned model, whose weights are rewritten) the weight and config files.
_NOT_CARRIED = (CARD, QUANTIZATION_FILE, "teacher-captions.json", "checkpoints", "checkpoint-*", "runs", "*.tmp", ".*")
_REWRITTEN = ("*.safetensors", "*.bin", "config.json", "generation_config.json")


def copy_folder(source: Path, out: Path, *, rewritten: bool) -> None:
    """The source's files in OUT: tokenizer, processor and markers (and, unless ``rewritten``, the weights)."""
    ignored = _NOT_CARRIED + (_REWRITTEN if rewritten else ())
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(*ignored), dirs_exist_ok=True)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
