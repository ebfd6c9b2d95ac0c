"""Cheaper models at a measured quality (issue 22), on this machine's CPU, rerunnable:

    .venv/bin/python -m bench.cheaper_models [--work /tmp/captioner-cheaper] [--teacher-steps 1000]

1. synthetic scenes (``data synth --difficulty mixed``): a training set with references, an unlabeled set for the
   teacher to label, and a held-out test set neither model sees in training;
2. the teacher: ``init-model --size mini`` trained on the references;
3. the student: ``init-model --size tiny`` distilled with ``train --teacher`` from the teacher's captions of the
   unlabeled set only (no human reference);
4. INT8 and a pruned (50 % of the MLP width, fine-tuned by distillation) copy of the teacher: ``optimize``;
5. each candidate against the teacher on the held-out set with ``cascade calibrate`` (both models caption the same
   images; CIDEr of each, generate time per image of each), which for the student is also the cascade's figures.

Every step is the real command line. The summary (JSON) goes to stdout and to ``--out``; docs/benchmarks.md quotes
it. Figures are CPU figures of this 2-core machine: run it on a quiet machine and record the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from captioner.cli import main as captioner

SETS = (("train", 1000, 11), ("unlabeled", 1000, 12), ("test", 150, 14))


def step(what: str, argv: list[str]) -> float:
    """Run one command line of captioner; its wall time."""
    print(f"== {what}: captioner {' '.join(argv)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    code = captioner(argv)
    if code != 0:
        raise SystemExit(f"{what} failed with exit status {code}")
    return time.monotonic() - started


def compare(work: Path, name: str, candidate: Path, teacher: Path, max_drop: float) -> dict[str, Any]:
    """``cascade calibrate`` of ``candidate`` (first) in front of ``teacher`` (second) on the held-out set."""
    out = work / f"compare-{name}.json"
    test = work / "test"
    step(f"compare {name}", ["cascade", "calibrate", "--annotations", str(test / "captions.json"), "--images",
                             str(test), "--first", str(candidate), "--second", str(teacher), "--max-cider-drop",
                             str(max_drop), "--json", "--out", str(out)])  # fmt: skip
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/captioner-cheaper"))
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--student-steps", type=int, default=1000)
    parser.add_argument("--prune-steps", type=int, default=300)
    parser.add_argument("--max-cider-drop", type=float, default=0.03)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cheaper_models.json"))
    args = parser.parse_args()
    os.environ.setdefault("CAPTIONER_MODEL__DEVICE", "cpu")
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    for name, count, seed in SETS:
        if not (work / name / "captions.json").is_file():
            step(f"synth {name}", ["data", "synth", "--out", str(work / name), "--images", str(count), "--seed",
                                   str(seed), "--difficulty", "mixed"])  # fmt: skip
    schedule = ["--lr", "2e-3", "--batch-size", "32", "--warmup-ratio", "0.05", "--seed", "0"]
    teacher, student = work / "teacher", work / "student"
    if not (teacher / "config.json").is_file():
        step("init mini", ["init-model", "--size", "mini", "--out", str(work / "mini"), "--seed", "0"])
        wall["teacher_training_s"] = step("train teacher", [
            "train", "--base", str(work / "mini"), "--out", str(teacher), "--annotations",
            str(work / "train" / "captions.json"), "--images", str(work / "train"),
            "--max-steps", str(args.teacher_steps), *schedule])  # fmt: skip
    if not (student / "config.json").is_file():
        step("init tiny", ["init-model", "--size", "tiny", "--out", str(work / "tiny"), "--seed", "0"])
        wall["student_training_s"] = step("distil student", [
            "train", "--base", str(work / "tiny"), "--out", str(student), "--teacher", str(teacher),
            "--images", str(work / "unlabeled"), "--max-steps", str(args.student_steps), *schedule])  # fmt: skip
    int8, pruned = work / "teacher-int8", work / "teacher-pruned"
    if not (int8 / "config.json").is_file():
        step("int8", ["optimize", "--model", str(teacher), "--out", str(int8), "--int8"])
    if not (pruned / "config.json").is_file():
        wall["prune_and_fine_tune_s"] = step("prune", [
            "optimize", "--model", str(teacher), "--out", str(pruned), "--prune", "0.5", "--images",
            str(work / "unlabeled"), "--max-steps", str(args.prune_steps)])  # fmt: skip
    results = {name: compare(work, name, model, teacher, args.max_cider_drop)
               for name, model in (("student", student), ("int8", int8), ("pruned", pruned))}  # fmt: skip
    summary: dict[str, Any] = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_average": os.getloadavg(), "wall": wall}  # fmt: skip
    for name, figures in results.items():
        summary[name] = {
            "cider": figures["cider_first"], "teacher_cider": figures["cider_second"],
            "cider_ratio": figures["cider_first"] / figures["cider_second"] if figures["cider_second"] else None,
            "s_per_image": figures["first_s_per_image"], "teacher_s_per_image": figures["second_s_per_image"],
            "speedup": figures["second_s_per_image"] / figures["first_s_per_image"],
        }  # fmt: skip
    cascade = results["student"]
    summary["cascade"] = {key: cascade[key] for key in ("threshold", "escalated_share", "model_time_saved",
                                                          "cider_first", "cider_second", "cider_cascade")}  # fmt: skip
    text = json.dumps(summary, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
