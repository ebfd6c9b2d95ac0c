"""Resource budgets sized from measurements taken at warm-up: the batch size from GPU memory
(``batching.auto_batch_size``) and the model's CPU threads from measured costs (``model.auto_threads: measured``).

Both are pure functions of the measurements, so they are tested without a GPU or a quiet machine; ``blip.py``
takes the measurements, on the typical request that ``synthetic_photo`` draws.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Share of the memory free at warm-up that batches may fill: the rest absorbs fragmentation, other processes'
# growth and the larger batches of requests asking for more captions (more beams) than the probe used.
MEMORY_HEADROOM = 0.8
# The probe batch whose peak memory gives the cost of one image (big enough that fixed costs don't dominate).
PROBE_BATCH = 8


def batch_size_for_memory(
    *, per_image_bytes: float, available_bytes: float, limit: int, headroom: float = MEMORY_HEADROOM
) -> int:
    """The largest batch that fits ``headroom`` of ``available_bytes`` at ``per_image_bytes`` each, at most ``limit``.

    Rounded down to a multiple of 8 above 8 (tensor-core friendly shapes, and fewer distinct sizes to compile).
    """
    if per_image_bytes <= 0:
        return limit
    fits = int(available_bytes * headroom // per_image_bytes)
    size = max(1, min(limit, fits))
    return size if size < 8 else size - size % 8


def threads_from_costs(*, cores: int, model_cpu_s: float, other_cpu_s: float) -> int:
    """Intra-op threads for the model, from the CPU time one image costs the model and everything else.

    The rest of the server (decoding, resizing, the event loop) needs ``cores * other / (model + other)`` cores
    at saturation; the model gets what is left, rounded to the nearest core. The model's OpenMP team stalls at
    every operator when another thread takes one of its cores, so when the rest needs most of a core it gets
    one of its own (the tiny model: decoding costs half the model's time), and when it needs a small fraction
    of one, the model takes every core (a BLIP-base-sized model: decoding is ~1 % of an image's CPU time).
    """
    if cores <= 1:
        return 1
    total = model_cpu_s + other_cpu_s
    if total <= 0 or not math.isfinite(total):
        return cores - 1
    reserved = round(cores * other_cpu_s / total)
    return max(1, cores - reserved)


def synthetic_photo(width: int = 640, height: int = 480) -> bytes:
    """A photo-like JPEG (smooth gradients plus fine noise, quality 90) of a typical request's size, for timing."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()
