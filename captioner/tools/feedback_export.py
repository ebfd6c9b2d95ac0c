"""``captioner feedback export --out FILE [--images DIR]``: users' corrected captions as COCO captions JSON.

The output is what ``captioner train --annotations`` and ``captioner eval --annotations`` read: one image per
rated image that has a correction (``file_name`` is its SHA-256, the name the API knows it by), one annotation
per distinct correction. ``--images DIR`` also writes the images the server kept (``feedback.keep_images``)
there under those names; for the others, put your copy of each image in DIR as ``<sha256>``.

The records come from where the server keeps them, per the same config: Redis (``cache.redis_url`` or
``jobs.redis_url``), else ``feedback.path``. Only records within ``feedback.retention_s`` are exported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.feedback.collector import build_feedback_store
from captioner.feedback.store import FeedbackRecord
from captioner.observability.metrics import Metrics
from captioner.tools.command_line import add_command, runs


def add_feedback_commands(commands: Any) -> None:
    """Register ``feedback export`` on the top-level subparsers ``commands``."""
    feedback = commands.add_parser("feedback", help="users' ratings and corrected captions")
    actions = feedback.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    export = add_command(
        actions,
        "export",
        help="corrected captions as COCO-format annotations (for captioner train / eval)",
        doc=__doc__,
    )
    export.add_argument("--out", required=True, type=Path, help="where to write the COCO captions JSON")
    export.add_argument("--images", type=Path, help="also write the kept images to this folder")
    runs(export, run)


def coco_annotations(records: Sequence[FeedbackRecord]) -> dict[str, Any]:
    """The corrections, one image per SHA-256 and one annotation per distinct correction, oldest first."""
    image_ids: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    annotations: list[dict[str, Any]] = []
    for record in records:
        if not record.correction or (record.image_sha256, record.correction) in seen:
            continue
        seen.add((record.image_sha256, record.correction))
        image_id = image_ids.setdefault(record.image_sha256, len(image_ids) + 1)
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": record.correction})
    return {
        "info": {"description": "captioner user feedback: corrected captions", "date_created": _now()},
        "images": [{"id": image_id, "file_name": sha} for sha, image_id in image_ids.items()],
        "annotations": annotations,
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    coco, written = asyncio.run(export(settings, args.images))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(coco, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    kept = f"; {written} kept images written to {args.images}" if args.images is not None else ""
    print(f"{len(coco['annotations'])} corrected captions of {len(coco['images'])} images in {args.out}{kept}")
    if not coco["annotations"]:
        print("no feedback with a correction within feedback.retention_s", file=sys.stderr)
    return 0


async def export(settings: Settings, images: Path | None) -> tuple[dict[str, Any], int]:
    """The COCO document, and how many kept images were written to ``images``."""
    store = build_feedback_store(settings, Metrics())
    try:
        coco = coco_annotations(await store.records())
        written = 0
        if images is not None:
            images.mkdir(parents=True, exist_ok=True)
            for entry in coco["images"]:
                data = await store.image(entry["file_name"])
                if data is not None:
                    (images / entry["file_name"]).write_bytes(data)
                    written += 1
        return coco, written
    finally:
        await store.aclose()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
