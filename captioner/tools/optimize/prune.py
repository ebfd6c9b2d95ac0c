"""``captioner optimize --prune``: narrower MLPs (``surgery``), then a short fine-tune by distillation.

The pruned model is written to a temporary folder beside OUT and fine-tuned from there into OUT by ``captioner
train --teacher`` (the teacher is ``--teacher``, else the source model) on the images of ``--images``; without
``--images`` the pruned model is written to OUT as it is.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.tools.optimize.errors import OptimizeError
from captioner.tools.optimize.folders import copy_folder, count_parameters


def prune(args: argparse.Namespace, settings: Settings) -> str:
    """Prune the MLP width, then (with --images) fine-tune by distillation; returns the one-line summary."""
    import torch
    from transformers import BlipForConditionalGeneration

    from captioner.tools.optimize.card import model_entry, write_optimization_card
    from captioner.tools.optimize.surgery import prune_blip_mlps

    model: Any = BlipForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    before = count_parameters(model)
    towers = prune_blip_mlps(model, args.prune)
    after = count_parameters(model)
    teacher: Path = args.teacher or args.model
    if args.images is None:
        _write_model(model, args.model, args.out)
        fine_tune = None
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pruned-", dir=args.out.parent) as folder:
            pruned = Path(folder)
            _write_model(model, args.model, pruned)
            del model  # the student is loaded again by train, from the pruned folder
            fine_tune = _fine_tune(args, settings, pruned, teacher)
        fine_tune["teacher"] = model_entry(teacher)
    optimization = {
        "method": "structured-pruning",
        "fraction": args.prune,
        "criterion": "MLP neuron importance |fc_in row| * |fc_out column|, the same width in every layer of a tower",
        "towers": {
            t.tower: {
                "layers": t.layers,
                "intermediate_size": {"before": t.intermediate_size[0], "after": t.intermediate_size[1]},
                "num_attention_heads": {"before": t.num_attention_heads, "after": t.num_attention_heads},
            }
            for t in towers
        },
        "heads": "not pruned: transformers' BLIP has no config for fewer heads of the same size",
        "parameters": {"before": before, "after": after},
        "fine_tune": fine_tune,
    }
    write_optimization_card(args.out, args.model, optimization)
    tuned = f"fine-tuned {fine_tune['steps']} steps from {teacher}" if fine_tune else "not fine-tuned (no --images)"
    return f"pruned {args.prune:.0%} of the MLP width: {before:,} -> {after:,} parameters; {tuned}"


def _write_model(model: Any, source: Path, out: Path) -> None:
    copy_folder(source, out, rewritten=True)
    model.save_pretrained(out)


def _fine_tune(args: argparse.Namespace, settings: Settings, pruned: Path, teacher: Path) -> dict[str, Any]:
    """``captioner train --teacher`` from the pruned folder into OUT, with train's own parser and defaults."""
    from captioner.tools.train.command import TrainError, add_train_commands, train

    parser = argparse.ArgumentParser(prog="captioner")
    add_train_commands(parser.add_subparsers())
    options = {"--max-steps": args.max_steps, "--lr": args.lr, "--batch-size": args.batch_size}
    options |= {"--num-workers": args.num_workers, "--seed": args.seed, "--teacher": teacher, "--images": args.images}
    argv = ["train", "--base", str(pruned), "--out", str(args.out)]
    argv += [str(part) for option in options.items() for part in option]
    try:
        train(parser.parse_args(argv), settings)
    except TrainError as exc:
        raise OptimizeError(f"fine-tuning: {exc}") from exc
    return {"steps": args.max_steps, "images": str(args.images), "lr": args.lr, "batch_size": args.batch_size}
