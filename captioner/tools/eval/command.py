"""``captioner eval``: caption a COCO-format set of images and score the captions against its references.

    captioner eval --annotations captions_val2017.json --images val2017/ --out report.json

The annotations file is COCO's captions format: ``images`` (each with ``id`` and ``file_name``, relative to
``--images``) and ``annotations`` (each with ``image_id`` and ``caption``). A Karpathy split file takes its
place with ``--karpathy dataset_coco.json --split test --images ROOT`` (see ``references``). Every image with at
least one reference is captioned (the top caption, offline or through ``--server``, with the same batching as
``captioner caption``) and scored with pycocoevalcap (see ``coco_scores``): BLEU-1..4, ROUGE-L and CIDEr
always, METEOR when Java is installed. Without Java the report and stderr say so, and a pure-Python stand-in
replaces the Java PTB tokenizer.

The report (JSON: to ``--out``, else stdout) holds the corpus scores, the notes, the tokenizer used, and for
each image its caption, references and scores; images that failed are listed and left out of the scores.
Exit status: 0 when every image was scored, 1 when some failed, 2 for a bad annotations file or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.tools.caption.backends import BackendUnavailable
from captioner.tools.caption.command import add_client_arguments, collect_captions, open_backend
from captioner.tools.caption.output import CaptionRecord, path_key
from captioner.tools.command_line import add_command, runs
from captioner.tools.eval.annotations import AnnotationsError, EvalImage, load_annotations
from captioner.tools.eval.references import References, add_reference_arguments, references_of

# load_annotations and AnnotationsError are also imported from here by other modules and tests.
__all__ = ["AnnotationsError", "EvalImage", "add_eval_command", "evaluate_set", "load_annotations"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_reference_arguments(parser, annotations_help="COCO captions JSON (images + annotations)")
    parser.add_argument(
        "--images", required=True, type=Path, help="folder the images' file_name values (Karpathy: filepaths) are in"
    )
    parser.add_argument("--out", type=Path, help="where to write the JSON report (default: stdout)")


def add_eval_command(commands: Any) -> None:
    """Register ``eval`` on the top-level subparsers ``commands``."""
    scorer = add_command(
        commands, "eval", help="caption a COCO-format set and score it (BLEU, METEOR, ROUGE-L, CIDEr)", doc=__doc__
    )
    add_arguments(scorer)
    add_client_arguments(scorer)
    runs(scorer, run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = await evaluate_set(
            settings,
            references_of(args),
            args.images,
            server=args.server,
            api_key=args.api_key,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
        )
    except (AnnotationsError, BackendUnavailable, CaptionerError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    _emit(report, args.out)
    if not report["num_images"]:
        print("no image could be captioned: nothing was scored", file=sys.stderr)
    return 1 if report["num_failed"] else 0


async def evaluate_set(
    settings: Settings,
    annotations: Path | References,
    images_dir: Path,
    *,
    server: str | None = None,
    api_key: str | None = None,
    batch_size: int | None = None,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Caption every referenced image of a set with ``settings``' model (or ``server``) and score it.

    ``annotations`` is a COCO captions file, or ``References`` (either that or a Karpathy split).

    Returns the report that ``captioner eval`` writes; raises ``AnnotationsError`` for an unusable annotations
    file and ``BackendUnavailable`` / ``CaptionerError`` when no captions can be had at all. The deploy gate
    (``captioner models promote``) scores its versions with this too.
    """
    from tqdm import tqdm

    from captioner.tools.eval.coco_scores import find_java, score_captions

    started = time.monotonic()
    source = annotations if isinstance(annotations, References) else References(annotations)
    images, notes = source.load()
    if not images:
        raise AnnotationsError(f"{source}: no image has a reference caption")
    by_path: dict[str, list[EvalImage]] = {}
    for image in images:
        by_path.setdefault(path_key(str(images_dir / image.file_name)), []).append(image)
    paths = [images_dir / group[0].file_name for group in by_path.values()]

    backend = await open_backend(
        settings,
        server=server,
        api_key=api_key,
        num_captions=1,
        batch_size=batch_size,
        concurrency=concurrency,
    )
    progress: Any = tqdm(total=len(paths), unit="img", desc="captioning", file=sys.stderr, disable=None)
    try:
        records, failures = await collect_captions(
            paths,
            backend,
            on_failure=lambda f: progress.write(f"failed: {f.path}: {f.code}: {f.message}", file=sys.stderr),
            on_progress=progress.update,
        )
    finally:
        progress.close()
        await backend.aclose()

    captioned = [(image, records[key]) for key, group in by_path.items() if key in records for image in group]
    report: dict[str, Any] = {
        "annotations": str(source.path),
        "split": source.split,  # None for a COCO captions file
        "images_dir": str(images_dir),
        "model": backend.model,
        "server": server,
        "num_images": len(captioned),
        "num_failed": len(failures),
        "metrics": {},
        "tokenizer": None,
        "notes": notes,
        "failed": [{"path": f.path, "code": f.code, "message": f.message} for f in failures],
        "images": [],
    }
    if captioned:
        candidates = {image.image_id: _top(record) for image, record in captioned}
        references = {image.image_id: list(image.references) for image, _ in captioned}
        scores = await asyncio.to_thread(score_captions, references, candidates, java=find_java())
        report["metrics"] = scores.metrics
        report["tokenizer"] = scores.tokenizer
        report["notes"] = notes + scores.notes
        report["images"] = [
            {
                "image_id": image.image_id,
                "file_name": image.file_name,
                "caption": candidates[image.image_id],
                "confidence": record.captions[0].confidence if record.captions else None,
                "references": list(image.references),
                "scores": scores.per_image[image.image_id],
            }
            for image, record in captioned
        ]
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    return report


def _top(record: CaptionRecord) -> str:
    return record.captions[0].text if record.captions else ""


def _emit(report: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    width = max((len(name) for name in report["metrics"]), default=0)
    print(f"{report['num_images']} images scored ({report['tokenizer']}); report in {out}")
    for name, value in report["metrics"].items():
        print(f"  {name:<{width}}  {value:.4f}")
