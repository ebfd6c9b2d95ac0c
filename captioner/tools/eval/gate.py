"""Scoring registry versions on the gate set with ``captioner eval``'s evaluator (``evaluate.evaluate_set``).

The gate set is ``gate.annotations`` + ``gate.images`` (COCO captions format, as ``captioner eval`` reads).
Each scoring is recorded on the version (``meta.json``: ``evaluations``, and ``scores`` = the latest metrics;
``gate-report.json``: the full report with every caption) under a fingerprint of everything that decides the
numbers: the annotations' and images' bytes, the generation settings, the prompt, device and dtype, and whether
METEOR could run. A registered model never changes, so a later gate with the same fingerprint reuses the stored
scores instead of captioning the set again (``--rescore`` forces a new run).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.registry.aliases import now_iso
from captioner.registry.store import Registry, Version
from captioner.tools.caption.backends import BackendUnavailable
from captioner.tools.eval.annotations import AnnotationsError, load_annotations
from captioner.tools.eval.coco_scores import find_java
from captioner.tools.eval.command import evaluate_set


class GateUnavailable(Exception):
    """No usable gate set: the message says what to configure."""


class ScoringFailed(Exception):
    """A version could not be scored on the gate set (it failed on some images, or did not load)."""


@dataclass(frozen=True)
class GateSet:
    annotations: Path
    images: Path
    num_images: int
    fingerprint: str


@dataclass(frozen=True)
class Scored:
    metrics: dict[str, float]
    stored_at: str | None  # the time of the reused evaluation; None when scored just now


def gate_set(settings: Settings) -> GateSet:
    gate = settings.gate
    if not gate.annotations or not gate.images:
        raise GateUnavailable("the deploy gate has no set to score on: set gate.annotations and gate.images")
    annotations, images_dir = Path(gate.annotations), Path(gate.images)
    try:
        images, _ = load_annotations(annotations)
    except AnnotationsError as exc:
        raise GateUnavailable(f"gate.annotations: {exc}") from None
    if not images:
        raise GateUnavailable(f"gate.annotations {annotations}: no image has a reference caption")
    data = hashlib.sha256(annotations.read_bytes())
    for name in sorted({image.file_name for image in images}):
        path = images_dir / name
        data.update(f"\0{name}\0".encode())
        data.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing")
    model = settings.model
    decisive = {
        "data": data.hexdigest(),
        "generation": dataclasses.asdict(settings.generation),
        "prompt": model.prompt,
        "device": model.device,
        "dtype": model.dtype,
        "quantize": model.quantize,
        "meteor": find_java() is not None,
    }
    fingerprint = hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()
    return GateSet(annotations, images_dir, len(images), fingerprint)


def score(registry: Registry, version: Version, settings: Settings, gate: GateSet, *, rescore: bool) -> Scored:
    if not rescore:
        for evaluation in reversed(version.meta.get("evaluations") or []):
            if evaluation.get("gate_set") == gate.fingerprint and evaluation.get("metrics"):
                return Scored(dict(evaluation["metrics"]), stored_at=evaluation.get("time"))
    scoring = settings.replace(
        "model", path=str(version.model_dir), name=f"{version.name}:{version.number}", revision=str(version.number)
    )
    try:
        report = asyncio.run(evaluate_set(scoring, gate.annotations, gate.images))
    except (AnnotationsError, BackendUnavailable, CaptionerError, OSError) as exc:
        raise ScoringFailed(f"{version.ref}: {exc}") from None
    if report["num_failed"] or not report["metrics"]:
        first = report["failed"][0] if report["failed"] else {"code": "-", "message": "nothing was scored"}
        raise ScoringFailed(
            f"{version.ref} failed on {report['num_failed']} of the gate's images "
            f"(first: {first['code']}: {first['message']})"
        )
    metrics = {k: float(v) for k, v in report["metrics"].items()}
    entry: dict[str, Any] = {
        "time": now_iso(),
        "gate_set": gate.fingerprint,
        "annotations": str(gate.annotations),
        "images": str(gate.images),
        "num_images": report["num_images"],
        "tokenizer": report["tokenizer"],
        "metrics": metrics,
    }

    def record(meta: dict[str, Any]) -> None:
        meta.setdefault("evaluations", []).append(entry)
        meta["scores"] = metrics

    registry.update_meta(version.name, version.number, record)
    registry.write_gate_report(version.name, version.number, report)
    return Scored(metrics, stored_at=None)
