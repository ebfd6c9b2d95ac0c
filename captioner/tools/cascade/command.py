"""``captioner cascade calibrate``: choose ``cascade.threshold`` for a first model in front of a second (main) one.

    captioner cascade calibrate --annotations captions.json --images DIR --first student/ --second teacher/

Both models caption the annotated set offline, one after the other, through the server's own batching code (as
``captioner eval``; ``--batch-size`` as there). Each model's time per image is its ``generate()`` time (the
``captioner_inference_seconds`` it would report) over the images it captioned, after a warm-up; preprocessing is
left out (the server does it on other threads). The CIDEr of each image's caption, from each model, then gives
the CIDEr and the model time of every threshold (``captioner.tools.cascade.sweep`` says how, and how the
threshold is chosen: the most model time saved with CIDEr at most ``--max-cider-drop`` below the second model's
alone, relative).

stdout: the table (threshold, escalated share, model time saved against the second model alone, CIDEr), then
the chosen threshold alone on the last line (a float, for ``CAPTIONER_CASCADE__THRESHOLD=$(... | tail -1)``); with
``--json`` only one JSON object instead: ``{threshold, escalated_share, model_time_saved, cider_first,
cider_second, cider_cascade}``. The figures, the table and the models' times are also written to
``cascade.json`` in the first model's folder (``--out`` elsewhere), for a model card to show.
Exit status: 0, 1 when an image could not be captioned by a model (it is left out), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Hashable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.tools.caption.backends import BackendUnavailable, LocalBackend
from captioner.tools.caption.command import Failure, caption_files, open_backend
from captioner.tools.caption.output import path_key
from captioner.tools.cascade.sweep import Calibration, ImageFigures, calibrate
from captioner.tools.command_line import add_command, runs
from captioner.tools.eval.annotations import AnnotationsError, EvalImage, load_annotations


def add_cascade_commands(commands: Any) -> None:
    """Register ``cascade`` (and ``cascade calibrate``) on the top-level subparsers ``commands``."""
    cascade = commands.add_parser("cascade", help="the confidence cascade: calibrate its threshold")
    actions = cascade.add_subparsers(dest="action", required=True, metavar="ACTION")
    parser = add_command(
        actions, "calibrate", help="choose cascade.threshold on an annotated set (time saved vs CIDEr)", doc=__doc__
    )
    parser.add_argument("--annotations", required=True, type=Path, help="COCO captions JSON (images + annotations)")
    parser.add_argument("--images", required=True, type=Path, help="folder the images' file_name values are in")
    parser.add_argument("--first", required=True, type=Path, help="the first (cheaper) model's folder")
    parser.add_argument("--second", required=True, type=Path, help="the second (main) model's folder")
    parser.add_argument(
        "--max-cider-drop", type=float, default=0.03, help="the most CIDEr may fall below the second model's, "
        "relative (default: 0.03)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, help="images per generate call (default: batching.max_batch_size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--out", type=Path, help="where to write the figures (default: FIRST/cascade.json)")
    runs(parser, run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 <= args.max_cider_drop < 1:
        print("--max-cider-drop must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        images, notes = load_annotations(args.annotations)
    except AnnotationsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not images:
        print(f"{args.annotations}: no image has a reference caption", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_measure(settings, images, args))
    except (BackendUnavailable, CaptionerError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    for note in notes + report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    chosen: Calibration = report["calibration"]
    summary = {
        "threshold": chosen.threshold,
        "escalated_share": chosen.escalated_share,
        "model_time_saved": chosen.model_time_saved,
        "cider_first": chosen.cider_first,
        "cider_second": chosen.cider_second,
        "cider_cascade": chosen.cider_cascade,
    }
    _write_figures(args.out or args.first / "cascade.json", args, summary, report)
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(format_table(chosen, report)))
        print(repr(float(chosen.threshold)))
    return 1 if report["failed"] else 0


async def _measure(settings: Settings, images: list[EvalImage], args: argparse.Namespace) -> dict[str, Any]:
    """Caption the set with each model; the figures per image, each model's time per image, the calibration."""
    from captioner.tools.eval.coco_scores import find_java, score_captions

    by_path: dict[str, list[EvalImage]] = {}
    for image in images:
        by_path.setdefault(path_key(str(args.images / image.file_name)), []).append(image)
    paths = [args.images / group[0].file_name for group in by_path.values()]
    first = await _caption_with(settings, args.first, paths, args.batch_size)
    second = await _caption_with(settings, args.second, paths, args.batch_size)
    failed = sorted({f.path for f in first["failed"] + second["failed"]})
    for failure in first["failed"] + second["failed"]:
        print(f"failed: {failure.path}: {failure.code}: {failure.message}", file=sys.stderr)
    both = [key for key in by_path if key in first["captions"] and key in second["captions"]]
    if not both:
        raise ValueError("no image could be captioned by both models: nothing to calibrate on")
    references: dict[Hashable, list[str]] = {
        key: [ref for image in by_path[key] for ref in image.references] for key in both
    }
    # CIDEr only (no METEOR JVM); each model's captions scored on their own, exactly as `captioner eval` would.
    java = find_java()
    scored = {
        name: await asyncio.to_thread(
            score_captions, references, {key: run["captions"][key][0] for key in both}, java=java, meteor=False
        )
        for name, run in (("first", first), ("second", second))
    }
    figures = [
        ImageFigures(
            confidence=first["captions"][key][1],
            cider_first=scored["first"].per_image[key]["CIDEr"],
            cider_second=scored["second"].per_image[key]["CIDEr"],
        )
        for key in both
    ]
    calibration = calibrate(
        figures, first_s=first["seconds_per_image"], second_s=second["seconds_per_image"],
        max_cider_drop=args.max_cider_drop,
    )  # fmt: skip
    return {
        "calibration": calibration,
        "first_s": first["seconds_per_image"],
        "second_s": second["seconds_per_image"],
        "num_images": len(both),
        "failed": failed,
        "tokenizer": scored["second"].tokenizer,
        "notes": [note for note in scored["second"].notes if not note.startswith(("METEOR", "SPICE"))],
    }


async def _caption_with(settings: Settings, folder: Path, paths: list[Path], batch_size: int | None) -> dict[str, Any]:
    """Each path's top caption and its confidence from the model in ``folder``, and its model time per image."""
    model_settings = settings.replace("model", path=str(folder), name=folder.resolve().name)
    model_settings = model_settings.replace("cache", max_entries=0, redis_url="")
    # Model time per image is read from the static batcher's inference series (continuous mode has none): the
    # captions are the same in both modes (tests/integration/model/test_continuous_parity.py).
    model_settings = model_settings.replace("batching", mode="static")
    backend = await open_backend(
        model_settings, server=None, api_key=None, num_captions=1, batch_size=batch_size, concurrency=1
    )
    assert isinstance(backend, LocalBackend), "calibration captions in this process"
    captions: dict[str, tuple[str, float]] = {}
    failures: list[Failure] = []
    try:
        await backend.service.warm_up()  # one-time costs (allocation, first-call setup) out of the timing
        await caption_files(
            paths,
            backend,
            on_record=lambda r: captions.__setitem__(path_key(r.path), (r.captions[0].text, r.captions[0].confidence)),
            on_failure=failures.append,
        )
        registry = backend.service.metrics.registry
        labels = {"variant": backend.service.variant}
        seconds = registry.get_sample_value("captioner_inference_seconds_sum", labels) or 0.0
        count = registry.get_sample_value("captioner_images_total", labels) or 0.0
    finally:
        await backend.aclose()
    if not count:
        raise ValueError(f"{folder}: no image could be captioned")
    return {"captions": captions, "failed": failures, "seconds_per_image": seconds / count}


def format_table(chosen: Calibration, report: dict[str, Any]) -> list[str]:
    """The lines of the printed table: the models' figures, then one row per threshold tried."""
    lines = [
        f"{report['num_images']} images; model time per image: first {report['first_s'] * 1000:.2f} ms, "
        f"second {report['second_s'] * 1000:.2f} ms; CIDEr: first {chosen.cider_first:.4f}, "
        f"second {chosen.cider_second:.4f} ({report['tokenizer']})",
        f"{'threshold':>10}  {'escalated':>9}  {'time saved':>10}  {'CIDEr':>8}",
    ]
    for row in chosen.rows:
        mark = "  <- chosen" if row.threshold == chosen.threshold else ("" if row.qualifies else "  (CIDEr too low)")
        lines.append(
            f"{row.threshold:>10.4f}  {row.escalated_share:>9.1%}  {row.model_time_saved:>10.1%}  "
            f"{row.cider:>8.4f}{mark}"
        )
    return lines


def _write_figures(out: Path, args: argparse.Namespace, summary: dict[str, Any], report: dict[str, Any]) -> None:
    """The figures for a model card; a folder that can't be written to costs a note, not the result."""
    document = {
        **summary,
        "max_cider_drop": args.max_cider_drop,
        "first": str(args.first),
        "second": str(args.second),
        "annotations": str(args.annotations),
        "num_images": report["num_images"],
        "first_s_per_image": report["first_s"],
        "second_s_per_image": report["second_s"],
        "tokenizer": report["tokenizer"],
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "table": [asdict(row) for row in report["calibration"].rows],
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        print(f"note: could not write the figures to {out}: {exc.strerror or exc}", file=sys.stderr)
