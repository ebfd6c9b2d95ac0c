"""The model card ``training.json`` that ``captioner train`` leaves beside the weights it wrote.

It says where a model came from, so that a registry, a deploy gate or a person can trust or reproduce it:
the parent model (path, name, weights hash), the data (annotation files' SHA-256), the arguments, the steps,
the loss curve, the validation scores at every evaluation, the best step, the code revision and the time.
A distilled model's card also names its teacher (``distilled_from``: path, weights hash, captions per image) and
the teacher's labels it trained on (``data.train.teacher_labels``); the registry turns the teacher's weights hash
into its registered version, as it does for the parent.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from captioner import __version__
from captioner.config import Settings
from captioner.model.weights import is_untrained
from captioner.registry.store import CARD, weights_sha256  # one weights hash, shared with the registry
from captioner.tools.eval.references import References, optional_references_of
from captioner.tools.train.data import CaptionSet
from captioner.tools.train.distillation import TeacherLabels

CARD_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def code_revision() -> str:
    """``git describe`` of the checkout this package runs from, else the package version."""
    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return f"captioner {__version__}"
    return f"captioner {__version__} ({done.stdout.strip()})"


def data_entry(annotations: Path, images: Path, *, num_images: int, num_captions: int) -> dict[str, Any]:
    return {
        "annotations": str(annotations),
        "annotations_sha256": sha256_file(annotations),
        "images": str(images),
        "num_images": num_images,
        "num_captions": num_captions,
    }


def curves(log_history: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Trainer's log history -> the loss curve and the validation scores, one entry per logged step."""
    loss: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    for entry in log_history:
        step = int(entry.get("step", 0))
        if "loss" in entry:
            point = {"step": step, "loss": round(float(entry["loss"]), 6)}
            if "learning_rate" in entry:
                point["learning_rate"] = float(entry["learning_rate"])
            loss.append(point)
        scores = {k.removeprefix("eval_"): v for k, v in entry.items() if k.startswith("eval_")}
        if scores:
            kept = {k: round(float(v), 6) for k, v in scores.items() if k not in ("runtime", "steps_per_second")}
            kept.pop("samples_per_second", None)
            validation.append({"step": step, **kept})
    return loss, validation


def build_card(
    args: argparse.Namespace,
    settings: Settings,
    *,
    base: Path,
    out: Path,
    trainer: Any,
    train_set: CaptionSet,
    val_set: CaptionSet | None,
    teacher_labels: TeacherLabels | None = None,
) -> dict[str, Any]:
    """The card of a finished run, from its arguments, its data and the Trainer's state."""
    state, targs = trainer.state, trainer.args
    loss, validation = curves(state.log_history)
    summary: dict[str, Any] = next((e for e in reversed(state.log_history) if "train_runtime" in e), {})
    from_config = args.base is None  # the base is the config's model: its hub name and revision describe it
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not callable(v)}
    return {
        "model": {"path": str(out), "weights_sha256": weights_sha256(out)},
        "parent": {
            "path": str(base),
            "name": settings.model.name if from_config else None,
            "revision": settings.model.revision if from_config else None,
            "weights_sha256": weights_sha256(base),
            "untrained": is_untrained(base),
        },
        "data": {
            "train": _train_data(train_set, optional_references_of(args), teacher_labels),
            "validation": _data(val_set, References(args.val_annotations)) if val_set is not None else None,
        },
        "distilled_from": None if teacher_labels is None else distilled_from(teacher_labels, settings),
        "arguments": arguments,
        "training": {
            "prompt": settings.model.prompt,
            "generation": dataclasses.asdict(settings.generation),  # what validation captions were made with
            "device": str(targs.device),
            "precision": "bf16" if targs.bf16 else "fp16" if targs.fp16 else "fp32",
            "world_size": targs.world_size,
            "effective_batch_size": targs.per_device_train_batch_size
            * targs.gradient_accumulation_steps
            * targs.world_size,
            "runtime_s": summary.get("train_runtime"),
            "samples_per_second": summary.get("train_samples_per_second"),
        },
        "steps": state.global_step,
        "epochs": state.epoch,
        "loss_curve": loss,
        "validation": validation,
        "best": None
        if state.best_global_step is None
        else {"step": state.best_global_step, "metric": targs.metric_for_best_model, "value": state.best_metric},
    }


def distilled_from(labels: TeacherLabels, settings: Settings) -> dict[str, Any]:
    """The teacher of a distilled model: which weights, and how its targets were generated."""
    generation = settings.generation
    return {
        "path": str(labels.teacher),
        "weights_sha256": weights_sha256(labels.teacher),
        "untrained": is_untrained(labels.teacher),
        "captions_per_image": labels.captions_per_image,
        "num_beams": max(generation.num_beams, labels.captions_per_image),
        "max_length": generation.max_length,
        "min_length": generation.min_length,
    }


def _train_data(captions: CaptionSet, human: References | None, labels: TeacherLabels | None) -> dict[str, Any]:
    if labels is None:
        assert human is not None  # train: without a teacher the references are required
        return _data(captions, human)
    return {
        "images": str(captions.image_dir),
        "num_images": len(captions.images),
        "num_captions": captions.num_captions,
        "targets": "teacher" if human is None else "teacher+human",
        "teacher_labels": data_entry(
            labels.file,
            captions.image_dir,
            num_images=len(labels.images),
            num_captions=sum(len(i.references) for i in labels.images),
        )
        | {"num_failed": labels.num_failed},
        "human": None if human is None else _human_entry(human),
    }


def _human_entry(source: References) -> dict[str, Any]:
    entry = {"annotations": str(source.path), "annotations_sha256": sha256_file(source.path)}
    if source.split is not None:
        entry["split"] = source.split
    return entry


def _data(captions: CaptionSet, source: References) -> dict[str, Any]:
    entry = data_entry(
        source.path, captions.image_dir, num_images=len(captions.images), num_captions=captions.num_captions
    )
    if source.split is not None:  # a Karpathy split file: which of its splits was read
        entry["split"] = source.split
    return entry


def write_card(out: Path, card: Mapping[str, Any]) -> Path:
    """Write ``card`` (with the version, code revision and time added) to ``out/training.json``."""
    full = {
        "card_version": CARD_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_revision": code_revision(),
        **card,
    }
    path = out / CARD
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a card
    return path
