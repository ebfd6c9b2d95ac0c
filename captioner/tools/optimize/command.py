"""``captioner optimize``: a cheaper version of a model folder, as a candidate for the registry and its gate.

    captioner optimize --model models/blip --out models/blip-int8 --int8
    captioner optimize --model models/blip --out models/blip-pruned --prune 0.5 --images unlabeled/ --max-steps 300

OUT is a model folder like any other: ``captioner eval`` scores it, ``captioner models register`` registers it
(its card names the source as the parent) and the gate compares it with production; ``captioner serve`` loads it
with ``model.path``. Its card (``training.json``) says what was done: the source model, the method, its
settings, and the parameter counts before and after.

- ``--int8``: every ``nn.Linear`` (both towers, the LM head included) dynamically quantised to INT8: weights
  int8 with a per-tensor scale, activations quantised per batch at run time (torch.ao, fbgemm kernels). OUT
  keeps the float32 weights plus ``quantization.json``; the loader (``serve``, ``eval``, the gate) quantises
  them as it loads (see ``captioner/model/folder_quantization.py`` for why). CPU and float32 only: on a GPU the
  folder is served in float32 with a warning. Disk size does not change; memory and speed are what it is for.
- ``--prune FRACTION``: structured pruning of the MLP width of the vision encoder and the text decoder (the
  least important FRACTION of the intermediate neurons of every layer, by weight magnitude, see
  ``pruning.py``); the config's ``intermediate_size`` shrinks, so OUT loads as an ordinary, smaller BLIP.
  Attention heads are not pruned (``surgery.py`` says why). With ``--images DIR`` the pruned model is then
  fine-tuned for ``--max-steps`` by distillation (``captioner train --teacher``) from ``--teacher`` (default:
  the source model) on that folder's images; without ``--images`` it is pruned only, and loses quality.

Exit status: 0 when OUT was written, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.model.weights import has_weights
from captioner.registry.store import CARD
from captioner.tools.command_line import add_command, runs
from captioner.tools.optimize.errors import OptimizeError


def add_optimize_command(commands: Any) -> None:
    """Register ``optimize`` on the top-level subparsers ``commands``."""
    parser = add_command(
        commands, "optimize", help="write a cheaper model folder: INT8 weights or structured pruning", doc=__doc__
    )
    parser.add_argument("--model", required=True, type=Path, metavar="DIR", help="the model folder to start from")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the model folder to write")
    method = parser.add_mutually_exclusive_group(required=True)
    method.add_argument("--int8", action="store_true", help="INT8 weights (dynamic quantisation, CPU)")
    method.add_argument("--prune", type=float, metavar="FRACTION", help="prune this share of the MLP width (0..1)")
    tune = parser.add_argument_group("fine-tuning after --prune (by distillation)")
    tune.add_argument("--teacher", type=Path, metavar="DIR", help="the teacher (default: the --model folder)")
    tune.add_argument("--images", type=Path, metavar="DIR", help="images to fine-tune on; without them: prune only")
    tune.add_argument("--max-steps", type=int, default=200, metavar="N", help="fine-tuning steps (default 200)")
    tune.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (default 1e-4)")
    tune.add_argument("--batch-size", type=int, default=16, metavar="N", help="fine-tuning batch (default 16)")
    tune.add_argument("--num-workers", type=int, default=2, metavar="N", help="DataLoader worker processes")
    tune.add_argument("--seed", type=int, default=0)
    runs(parser, run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        check_arguments(args)
        if args.int8:
            from captioner.tools.optimize.int8 import write_int8

            summary = write_int8(args.model, args.out)
        else:
            from captioner.tools.optimize.prune import prune

            summary = prune(args, settings)
    except OptimizeError as exc:
        print(f"optimize: {exc}", file=sys.stderr)
        return 2
    print(summary)
    print(f"wrote {args.out} (card: {args.out / CARD}); score it with captioner eval, or register it for the gate")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    if not has_weights(args.model):
        raise OptimizeError(f"--model {args.model}: no model there (config.json and weights)")
    if args.out.resolve() == args.model.resolve():
        raise OptimizeError(f"--out {args.out} is the --model folder; write the optimised model somewhere else")
    if args.out.exists() and any(args.out.iterdir()):
        raise OptimizeError(f"--out {args.out} is not empty; choose a new folder")
    if args.int8:
        given = [flag for flag, value in (("--teacher", args.teacher), ("--images", args.images)) if value is not None]
        if given:
            raise OptimizeError(f"{' and '.join(given)} go with --prune (--int8 needs no training)")
        return
    if not 0.0 < args.prune < 1.0:
        raise OptimizeError(f"--prune takes the share of the MLP width to remove, in (0, 1); got {args.prune}")
    if args.teacher is not None and not has_weights(args.teacher):
        raise OptimizeError(f"--teacher {args.teacher}: no model there (config.json and weights)")
    if args.teacher is not None and args.images is None:
        raise OptimizeError("--teacher is for the fine-tuning after pruning: give --images DIR to fine-tune on")
    if args.images is not None and not args.images.is_dir():
        raise OptimizeError(f"--images {args.images}: not a folder")
    if args.max_steps < 1 or args.batch_size < 1 or args.lr <= 0:
        raise OptimizeError("--max-steps, --batch-size and --lr must be positive")
