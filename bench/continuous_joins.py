"""Why continuous batching admits arrivals in groups (``JoinPolicy``, captioner/model/decode_loop.py): the decode
engine alone, in this process, with at most ``--live`` images in its running set, admitting at most N images at a
time, against static batches of the same size on the same images.

    python -m bench.continuous_joins --model DIR [--images 256] [--live 16] [--profile]

Each admission is a vision pass and a prompt step of its own and a copy of the running set's KV cache, so one
image at a time costs throughput at saturation. Prints images/s per group size (and, with ``--profile``, the
cumulative profile of the one-at-a-time run). One torch thread; wall-clock figures: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import torch

from bench.images import photo
from captioner.config import load_settings
from captioner.model.blip import BlipCaptioner
from captioner.model.decode_engine import DecodeEngine, DecodeRequest
from captioner.model.protocol import CaptionJob

GROUPS = (1, 2, 4, 8)


def engine_run(captioner: BlipCaptioner, jobs: list[CaptionJob], live_max: int, group: int) -> tuple[float, int]:
    """Keep the running set full, admitting at most ``group`` images at a time; (seconds, admissions)."""
    engine = DecodeEngine(captioner)
    admitted = live = done = admissions = 0
    started = time.perf_counter()
    while done < len(jobs):
        free = live_max - live
        if admitted < len(jobs) and free > 0:
            count = min(free, len(jobs) - admitted, group)
            answers = engine.admit([DecodeRequest(admitted + i, jobs[admitted + i]) for i in range(count)])
            admissions += 1
            admitted += count
            live += count - len(answers)
            done += len(answers)
        answers = engine.step()
        live -= len(answers)
        done += len(answers)
    return time.perf_counter() - started, admissions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder (a trained one: realistic lengths)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--live", type=int, default=16, help="images in the running set at most")
    parser.add_argument("--profile", action="store_true", help="profile the one-image-at-a-time run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = load_settings(None, {}).replace("model", path=str(args.model), device="cpu")
    captioner = BlipCaptioner(args.model, settings.model, settings.generation, settings.limits.max_pixels)
    jobs = [CaptionJob(captioner.preprocess(photo(seed)).pixel_values) for seed in range(args.images)]
    started = time.perf_counter()
    for first in range(0, len(jobs), args.live):
        captioner.caption_batch(jobs[first : first + args.live])
    print(f"static batches of {args.live}: {len(jobs) / (time.perf_counter() - started):7.1f} images/s")
    for group in GROUPS:
        seconds, admissions = engine_run(captioner, jobs, args.live, group)
        rate = len(jobs) / seconds
        print(f"continuous, joining <= {group} at a time: {rate:7.1f} images/s ({admissions} admissions)")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        engine_run(captioner, jobs, args.live, 1)
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
