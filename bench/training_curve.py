"""The synthetic CPU training run of docs/training.md, and its learning-curve plot, rerunnable.

    .venv/bin/python -m bench.training_curve [--steps 1000] [--eval-steps 100] [--work /tmp/captioner-curve]
    .venv/bin/python -m bench.training_curve --card MODEL/training.json      # re-plot a finished run only

It makes a synthetic set (``captioner data synth``), an untrained tiny BLIP (``captioner init-model``), trains
it with ``captioner train`` (validation CIDEr every ``--eval-steps``), and plots the model card's loss curve and
validation scores against step to ``docs/training-curve.png``. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from captioner.cli import main as captioner

DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "training-curve.png"


def run(work: Path, *, steps: int, eval_steps: int, train_images: int, val_images: int, lr: str) -> Path:
    """Synth, init-model, train; returns the trained model's card. Prints the command and the wall time."""
    os.environ.setdefault("CAPTIONER_MODEL__DEVICE", "cpu")
    work.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", train_images, 1), ("val", val_images, 2)):
        if not (work / name / "captions.json").is_file():
            synth = ["data", "synth", "--out", str(work / name), "--images", str(count), "--seed", str(seed)]
            assert captioner(synth) == 0
    if not (work / "tiny" / "config.json").is_file():
        assert captioner(["init-model", "--size", "tiny", "--out", str(work / "tiny"), "--seed", "0"]) == 0
    out = work / f"trained-{steps}"
    command = [
        "train", "--base", str(work / "tiny"), "--out", str(out),
        "--annotations", str(work / "train" / "captions.json"), "--images", str(work / "train"),
        "--val-annotations", str(work / "val" / "captions.json"), "--val-images", str(work / "val"),
        "--max-steps", str(steps), "--eval-steps", str(eval_steps), "--batch-size", "32", "--lr", lr,
        "--warmup-ratio", "0.05", "--logging-steps", "25", "--seed", "0",
    ]  # fmt: skip
    print("captioner " + shlex.join(command), file=sys.stderr)
    started = time.monotonic()
    if captioner(command) != 0:
        raise SystemExit("training failed")
    print(f"trained {steps} steps in {time.monotonic() - started:.0f} s wall", file=sys.stderr)
    return out / "training.json"


def plot(card_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card: dict[str, Any] = json.loads(card_path.read_text())
    loss = card["loss_curve"]
    validation = card["validation"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    top.plot([p["step"] for p in loss], [p["loss"] for p in loss], label="training loss", color="tab:blue")
    top.plot([v["step"] for v in validation], [v["loss"] for v in validation], "o-", label="validation loss",
             color="tab:orange")  # fmt: skip
    top.set_yscale("log")
    top.set_ylabel("cross-entropy (log scale)")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(
        [v["step"] for v in validation], [v["cider"] for v in validation], "o-", label="CIDEr", color="tab:green"
    )
    bottom.plot([v["step"] for v in validation], [v["bleu_4"] for v in validation], "s-", label="BLEU-4",
                color="tab:purple")  # fmt: skip
    bottom.set_xlabel("optimizer step (batch 32)")
    bottom.set_ylabel("validation score")
    bottom.legend()
    bottom.grid(alpha=0.3)
    data = card["data"]
    figure.suptitle(
        f"captioner train: tiny BLIP on synthetic shapes ({data['train']['num_images']} train / "
        f"{data['validation']['num_images']} val images), 2-core CPU",
        fontsize=10,
    )
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110)
    print(f"wrote {png}", file=sys.stderr)


def summary(card_path: Path) -> str:
    card = json.loads(card_path.read_text())
    rows = ["| step | training loss | validation loss | CIDEr | BLEU-4 |", "|---:|---:|---:|---:|---:|"]
    losses = {p["step"]: p["loss"] for p in card["loss_curve"]}
    for v in card["validation"]:
        near = min(losses, key=lambda step: abs(step - v["step"]))
        rows.append(f"| {v['step']} | {losses[near]:.3f} | {v['loss']:.3f} | {v['cider']:.3f} | {v['bleu_4']:.3f} |")
    runtime = card["training"]["runtime_s"]
    return "\n".join(rows) + f"\n\nbest step {card['best']['step']}; Trainer runtime {runtime:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/captioner-curve"), help="data and models go here")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--lr", default="2e-3")
    parser.add_argument("--card", type=Path, help="plot this finished run's training.json instead of training")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG to write (default {DEFAULT_PLOT})")
    args = parser.parse_args()
    card = args.card or run(
        args.work,
        steps=args.steps,
        eval_steps=args.eval_steps,
        train_images=args.train_images,
        val_images=args.val_images,
        lr=args.lr,
    )
    plot(card, args.plot)
    print(summary(card))


if __name__ == "__main__":
    main()
