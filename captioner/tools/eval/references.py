"""Where a set's reference captions come from: a COCO captions file, or one split of a Karpathy split file.

``captioner eval`` and ``captioner train`` take either, with the same options:

    --annotations captions_val2017.json --images val2017/
    --karpathy dataset_coco.json --split test --images coco/          # coco/val2014/..., coco/train2014/...

``--annotations`` and ``--karpathy`` exclude each other; ``--split`` goes with ``--karpathy`` only. Both load
into the same ``EvalImage`` list (file names relative to ``--images``), so nothing downstream knows which it was.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.tools.eval.annotations import AnnotationsError, EvalImage, load_annotations
from captioner.tools.eval.karpathy import SPLITS, load_karpathy


@dataclass(frozen=True)
class References:
    """A COCO captions file (``split`` None), or the ``split`` of a Karpathy split file at ``path``."""

    path: Path
    split: str | None = None

    def load(self) -> tuple[list[EvalImage], list[str]]:
        """The images that have references, and notes about anything left out (``AnnotationsError`` if unusable)."""
        if self.split is None:
            return load_annotations(self.path)
        return load_karpathy(self.path, self.split)

    def __str__(self) -> str:
        """As the command line said it, for messages."""
        if self.split is None:
            return f"--annotations {self.path}"
        return f"--karpathy {self.path} --split {self.split}"


def add_reference_arguments(parser: Any, *, annotations_help: str, required: bool = True) -> None:
    """``--annotations FILE`` or ``--karpathy FILE --split SPLIT`` on ``parser``; one of them is ``required``
    (``train --teacher`` makes them optional: the caller then checks that it has captions from somewhere)."""
    choice = parser.add_mutually_exclusive_group(required=required)
    choice.add_argument("--annotations", type=Path, metavar="FILE", help=annotations_help)
    choice.add_argument(
        "--karpathy", type=Path, metavar="FILE", help="a Karpathy split file (dataset_coco.json, ...) instead"
    )
    parser.add_argument("--split", choices=SPLITS, help="with --karpathy: the split to read (restval counts as train)")


def references_of(args: argparse.Namespace) -> References:
    """The references ``args`` name; an ``AnnotationsError`` (a usage error) for ``--split`` without ``--karpathy``
    or the other way round, or for neither file (see ``optional_references_of``)."""
    found = optional_references_of(args)
    if found is None:
        raise AnnotationsError("give --annotations FILE or --karpathy FILE --split SPLIT")
    return found


def optional_references_of(args: argparse.Namespace) -> References | None:
    """As ``references_of``, but None when neither ``--annotations`` nor ``--karpathy`` was given."""
    if args.karpathy is None:
        if args.split is not None:
            raise AnnotationsError("--split goes with --karpathy (a COCO --annotations file has no splits)")
        if args.annotations is None:
            return None
        return References(args.annotations)
    if args.split is None:
        raise AnnotationsError(f"--karpathy {args.karpathy}: say which split to read with --split {'|'.join(SPLITS)}")
    return References(args.karpathy, args.split)
