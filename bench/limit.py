"""The model's own limit: preprocessed tensors straight into ``caption_batch`` at a fixed batch size, in a loop.

    python -m bench.limit --config bench.yaml --duration 15 [--batch 16] [--json]

No HTTP, no queue, no decoding in the timed loop: the photos (the load generator's pool) are preprocessed once,
up front. The model is loaded exactly as the server loads it (same config file, same ``BlipCaptioner``), so
the server's throughput at saturation divided by this number is the share of the model's speed it delivers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from bench.images import photo
from bench.servers import in_process
from captioner.config import load_settings


@dataclass
class LimitResult:
    batch_size: int
    batches: int
    images_per_s: float
    batch_ms_mean: float
    batch_ms_p50: float
    warmup_s: float  # load-free time of the first (warm-up) batch: torch.compile pays here


def measure(
    config: str | None, *, duration_s: float, batch_size: int | None = None, min_batches: int = 2
) -> LimitResult:
    from captioner.model.loader import load_captioner
    from captioner.model.protocol import CaptionJob

    settings = in_process(load_settings(config))
    size = batch_size or settings.batching.max_batch_size
    captioner = load_captioner(settings)
    captioner.warm_up()  # sizes the threads as the server's warm-up does (model.auto_threads)
    tensors = [captioner.preprocess(photo(seed)).pixel_values for seed in range(max(size, 64))]
    started = time.perf_counter()
    captioner.caption_batch([CaptionJob(t) for t in tensors[:size]])
    warmup_s = time.perf_counter() - started
    times: list[float] = []
    offset = 0
    began = time.perf_counter()
    while len(times) < min_batches or time.perf_counter() - began < duration_s:
        batch = [CaptionJob(tensors[(offset + i) % len(tensors)]) for i in range(size)]
        offset += size
        t0 = time.perf_counter()
        captioner.caption_batch(batch)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return LimitResult(
        batch_size=size,
        batches=len(times),
        images_per_s=size * len(times) / total,
        batch_ms_mean=total / len(times) * 1000,
        batch_ms_p50=statistics.median(times) * 1000,
        warmup_s=warmup_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the captioner config file the server reads")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of timed batches (at least 2)")
    parser.add_argument("--batch", type=int, help="batch size (default: batching.max_batch_size)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.config, duration_s=args.duration, batch_size=args.batch)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"batch {result.batch_size}: {result.images_per_s:.2f} images/s "
            f"({result.batches} batches, {result.batch_ms_mean:.0f} ms each)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
