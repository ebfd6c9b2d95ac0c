"""Two costs of the process worker's path, each against its baseline in one run (docs/benchmarks.md):

1. the garbage collector's full pass in a server process holding torch, transformers and a warm model, before
   and after ``model/heap.settle`` (what the server runs after warm-up): the pause every request in flight
   waits out when CPython decides on a full collection;
2. a batch's round trip to a child process: a new shared tensor per batch (torch's file-descriptor passing,
   the path before 2026-12-01) against a slab handed over once (``model/process_worker.py``).

    .venv/bin/python -m bench.process_costs [--models DIR] [--json]

Both are CPU-bound on one core and need no server or client; the figures are medians of repeated runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing  # registers the shared-memory reductions

from bench import harness
from captioner.config import load_settings
from captioner.model import heap
from captioner.model.loader import load_captioner


def gc_pauses(model_dir: Path, rounds: int = 5) -> dict[str, float]:
    import httpx  # noqa: F401 - what a server process holds besides the model
    import starlette.applications  # noqa: F401
    import uvicorn  # noqa: F401

    settings = load_settings(None, {"CAPTIONER_MODEL__PATH": str(model_dir), "CAPTIONER_MODEL__WORKER": "thread"})
    captioner = load_captioner(settings)
    captioner.warm_up()

    def full_pass_ms() -> float:
        times = []
        for _ in range(rounds):
            started = time.process_time()
            gc.collect()
            times.append((time.process_time() - started) * 1000)
        return statistics.median(times)

    gc.unfreeze()
    before = full_pass_ms()
    heap.settle()
    after = full_pass_ms()
    gc.unfreeze()
    return {"objects": float(len(gc.get_objects())), "full_pass_ms": before, "after_settle_ms": after}


def _echo(conn: Connection) -> None:
    slab = None
    while True:
        message = conn.recv()
        if message is None:
            return
        if message[0] == "tensor":
            conn.send(float(message[1][0, 0, 0, 0]))
        else:
            slab = message[2] if message[2] is not None else slab
            assert slab is not None
            conn.send(float(slab[: message[1]][0, 0, 0, 0]))


def ipc_round_trip(shape: tuple[int, ...], batches: int = 50) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_echo, args=(child,), daemon=True)
    process.start()
    images = [torch.randn(shape[1:]) for _ in range(shape[0])]
    slab = torch.empty(shape)
    slab.share_memory_()  # type: ignore[no-untyped-call]
    try:

        def per_batch_ms(send: Any) -> float:
            for _ in range(5):
                send()
                parent.recv()
            started = time.perf_counter()
            for _ in range(batches):
                send()
                parent.recv()
            return (time.perf_counter() - started) / batches * 1000

        new_tensor = per_batch_ms(lambda: parent.send(("tensor", torch.stack(images))))
        parent.send(("slab", len(images), slab))
        parent.recv()

        def into_slab() -> None:
            torch.stack(images, out=slab[: len(images)])
            parent.send(("slab", len(images), None))

        return {"new_tensor_ms": new_tensor, "slab_ms": per_batch_ms(into_slab)}
    finally:
        parent.send(None)
        process.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "captioner-bench", help="as run_all's")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = {"gc": {}, "ipc": {}}
    for size in ("tiny", "small"):
        result["gc"][size] = gc_pauses(harness.ensure_model(args.models, size))
    for name, shape in (("tiny, 16 x 3 x 64 x 64", (16, 3, 64, 64)), ("small, 16 x 3 x 384 x 384", (16, 3, 384, 384))):
        result["ipc"][name] = ipc_round_trip(shape)
    if args.json:
        print(json.dumps(result))
    else:
        for size, r in result["gc"].items():
            print(f"gc, {size} model loaded: {r['objects']:.0f} objects; full pass {r['full_pass_ms']:.1f} ms, "
                  f"after heap.settle {r['after_settle_ms']:.1f} ms")  # fmt: skip
        for name, r in result["ipc"].items():
            print(f"batch round trip, {name}: new tensor {r['new_tensor_ms']:.2f} ms, slab {r['slab_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
