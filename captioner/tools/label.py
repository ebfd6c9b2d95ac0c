"""``captioner data label``: a teacher model's captions for a folder of unlabeled images, as a training set.

    captioner data label --model models/teacher --images data/unlabeled --out data/unlabeled/captions.json

Any pile of unlabeled images becomes training data for a cheaper student (``captioner train``). Every image
under ``--images`` (searched as ``captioner caption`` searches a folder: recursively, by extension, hidden
files left out) is captioned by the model in ``--model``, offline, through the same batching as
``captioner caption``, and its ``--num-captions`` most confident captions (default 1) become its references.

The output is COCO captions format, exactly what ``captioner train`` and ``captioner eval`` read with the same
``--images``: ``images`` (``id``, ``file_name`` relative to ``--images``, ``width``, ``height``) and
``annotations`` (``id``, ``image_id``, ``caption``, plus the teacher's ``confidence`` and the caption's
``rank`` from 1, which readers of plain COCO ignore); ``info`` names the teacher. A file that can't be
captioned is reported on stderr and left out.

Exit status: 0 when every image was labelled, 1 when some failed (the file holds the others), 2 for a usage
error (no model in ``--model``, no images, an unusable ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.model.weights import has_weights
from captioner.tools.caption.backends import BackendUnavailable
from captioner.tools.caption.command import Failure, collect_captions, find_images, open_backend, positive
from captioner.tools.caption.output import CaptionRecord, path_key
from captioner.tools.command_line import add_command, runs


class LabelError(ValueError):
    """Why labelling cannot start, as one line for the operator."""


@dataclass(frozen=True)
class Labels:
    """A labelled folder: the COCO captions document, and the files that could not be captioned."""

    document: dict[str, Any]
    failures: list[Failure]

    @property
    def num_images(self) -> int:
        return len(self.document["images"])

    @property
    def num_captions(self) -> int:
        return len(self.document["annotations"])


def teacher_settings(settings: Settings, model: Path, num_captions: int) -> Settings:
    """``settings`` with ``model`` as the model, allowed to return ``num_captions`` captions per image."""
    if not has_weights(model):  # checked here: an empty model.path would otherwise be downloaded into
        raise LabelError(f"--model {model}: no model there (config.json and weights)")
    settings = settings.replace("model", path=str(model))
    generation = settings.generation
    if num_captions > generation.max_num_captions:  # the server's cap on a request; offline, K is the caller's
        settings = settings.replace("generation", max_num_captions=num_captions)
    return settings


async def label_folder(
    settings: Settings,
    model: Path,
    images: Path,
    *,
    num_captions: int = 1,
    batch_size: int | None = None,
    on_progress: Callable[[], None] = lambda: None,
    on_failure: Callable[[Failure], None] = lambda failure: None,
) -> Labels:
    """Caption every image under ``images`` with the model in ``model`` and return them as COCO captions."""
    if not images.is_dir():
        raise LabelError(f"--images {images}: not a folder")
    paths, _ = find_images([str(images)])
    if not paths:
        raise LabelError(f"--images {images}: no image files in it")
    backend = await open_backend(
        teacher_settings(settings, model, num_captions),
        server=None,
        api_key=None,
        num_captions=num_captions,
        batch_size=batch_size,
        concurrency=1,  # ignored offline: the local backend keeps two batches in flight
    )
    try:
        records, failures = await collect_captions(paths, backend, on_failure=on_failure, on_progress=on_progress)
    finally:
        await backend.aclose()

    def failed(failure: Failure) -> None:  # an image the model gave no caption: a failure like the rest
        failures.append(failure)
        on_failure(failure)

    document = await asyncio.to_thread(_coco, images, paths, records, failed)
    document["info"] = {
        "description": "captions by a teacher model (captioner data label)",
        "model": str(model),
        "num_captions": num_captions,
    }
    return Labels(document, failures)


def _coco(
    root: Path, paths: list[Path], records: dict[str, CaptionRecord], failed: Callable[[Failure], None]
) -> dict[str, Any]:
    """The COCO captions document, images in the folder search's (sorted, stable) order."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for path in paths:
        record = records.get(path_key(str(path)))
        if record is None:
            continue  # failed, and reported as such
        captions = [c for c in record.captions if c.text.strip()]
        if not captions:  # an image without a reference is left out by every reader: say so here
            failed(Failure(str(path), "no_caption", "the model gave no caption for it"))
            continue
        with Image.open(path) as opened:  # the header only: the file was just decoded whole by the model
            width, height = opened.size
        image_id = len(images)
        images.append(
            {"id": image_id, "file_name": path.relative_to(root).as_posix(), "width": width, "height": height}
        )
        for rank, caption in enumerate(captions, start=1):
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "caption": caption.text,
                    "confidence": round(caption.confidence, 6),
                    "rank": rank,
                }
            )
    return {"images": images, "annotations": annotations}


def write_labels(labels: Labels, out: Path) -> None:
    """Write the document to ``out`` whole or not at all: a training run never reads half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(json.dumps(labels.document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(out)


def add_label_command(actions: Any) -> None:
    """Register ``label`` on the ``data`` command's subparsers ``actions``."""
    parser = add_command(
        actions,
        "label",
        help="caption a folder of unlabeled images with a teacher model, as COCO captions",
        doc=__doc__,
    )
    parser.add_argument("--model", required=True, type=Path, metavar="DIR", help="the teacher's model folder")
    parser.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of images to label")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="COCO captions JSON to write")
    parser.add_argument(
        "--num-captions", type=positive, default=1, metavar="K", help="references per image: the model's top K"
    )
    parser.add_argument(
        "--batch-size", type=positive, help="images per generate call (default: batching.max_batch_size)"
    )
    runs(parser, run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    if args.out.is_dir():
        print(f"data label: --out {args.out} is a folder; name the JSON file to write", file=sys.stderr)
        return 2
    progress: Any = tqdm(unit="img", desc="labelling", file=sys.stderr, disable=None)
    try:
        labels = await label_folder(
            settings,
            args.model,
            args.images,
            num_captions=args.num_captions,
            batch_size=args.batch_size,
            on_progress=progress.update,
            on_failure=lambda f: progress.write(f"failed: {f.path}: {f.code}: {f.message}", file=sys.stderr),
        )
    except (LabelError, BackendUnavailable, CaptionerError) as exc:
        print(f"data label: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    if not labels.num_images:
        print("data label: no image could be captioned; nothing written", file=sys.stderr)
        return 1
    write_labels(labels, args.out)
    print(
        f"wrote {labels.num_captions} captions of {labels.num_images} images to {args.out}"
        f" ({len(labels.failures)} failed)"
    )
    print(f"train on them with: captioner train --annotations {args.out} --images {args.images} ...")
    return 1 if labels.failures else 0
