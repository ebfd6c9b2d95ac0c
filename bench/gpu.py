"""GPU benchmark for a lent H200 (run through bench/gpu.sh): BLIP-base-sized throughput and batch latency.

    bench/gpu.sh                 # on the GPU machine: base model, fp16 and bf16, eager and compiled, <= 8 min
    bench/gpu.sh --dry-run       # anywhere: tiny model on the CPU, same code path, ~1-2 min

For each dtype, with and without ``torch.compile``, and each batch size (1, 8, 32, 64, 128): preprocessed
tensors straight into ``BlipCaptioner.caption_batch`` (beam 3, max length 20: the config defaults), timed per
batch with CUDA synchronised. Throughput is images per second of batch time; p50/p99 are per-batch latencies.
If time is left, our server is measured end to end on the same GPU (thread and process model workers).

No network: the model is ``captioner init-model --size base`` (BLIP-base's exact architecture, random weights),
written once to ``--models``. Every phase checks a global deadline and records what it had to skip.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def measure_model(
    model_dir: Path, *, device: str, dtype: str, compile_backend: str | None, batches: list[int], point_s: float,
    deadline: Deadline, min_left_s: float,
) -> dict[str, Any]:  # fmt: skip
    import torch

    from bench.images import photo
    from captioner.config import load_settings
    from captioner.model import acceleration
    from captioner.model.blip import BlipCaptioner
    from captioner.model.loader import load_captioner
    from captioner.model.protocol import CaptionJob

    settings = load_settings(None, {}).replace("model", path=str(model_dir), device=device, dtype=dtype)
    loaded = time.perf_counter()
    captioner = load_captioner(settings)
    if compile_backend:
        assert isinstance(captioner, BlipCaptioner)  # compile applies to the in-process model
        acceleration.compile_model(captioner._model, backend=compile_backend)
    out: dict[str, Any] = {"load_s": time.perf_counter() - loaded, "points": {}}
    tensors = [captioner.preprocess(photo(seed)).pixel_values for seed in range(min(32, max(batches)))]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for size in batches:
        if deadline.left() < min_left_s:
            out["points"][str(size)] = {"skipped": "time budget"}
            continue
        jobs = [CaptionJob(tensors[i % len(tensors)]) for i in range(size)]
        started = time.perf_counter()
        captioner.caption_batch(jobs)  # warm-up (and, compiled, the compilation for this shape)
        sync()
        first_s = time.perf_counter() - started
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - began < point_s and len(times) < 200):
            t0 = time.perf_counter()
            captioner.caption_batch(jobs)
            sync()
            times.append(time.perf_counter() - t0)
            if deadline.left() < min_left_s / 2:
                break
        times.sort()
        out["points"][str(size)] = {
            "images_per_s": size * len(times) / sum(times),
            "p50_ms": statistics.median(times) * 1000,
            "p99_ms": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))] * 1000,
            "batches": len(times),
            "first_batch_s": first_s,
        }
        point = out["points"][str(size)]
        print(f"    batch {size:>3}: {point['images_per_s']:8.1f} img/s  p50 {point['p50_ms']:7.1f} ms  "
              f"p99 {point['p99_ms']:7.1f} ms  (first {first_s:.1f} s)", flush=True)  # fmt: skip
    if device.startswith("cuda"):
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del captioner
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def measure_server(
    model_dir: Path, *, device: str, dtype: str, worker: str, batch: int, seconds: float
) -> dict[str, Any]:
    """Our server end to end on this device: closed loop, 4 x batch clients, distinct images, JSON bodies."""
    from bench import harness
    from bench.loadgen import BodySource

    with tempfile.TemporaryDirectory() as tmp:
        config = harness.write_config(
            Path(tmp), "gpu", model_dir,
            model={"device": device, "dtype": dtype, "worker": worker},
            batching={"max_batch_size": batch, "max_queue": 8 * batch},
            server={"preprocess_workers": max(2, (os.cpu_count() or 4) - 2)},
        )  # fmt: skip
        with harness.serve("ours", config, Path(tmp)) as server:
            result = harness.measure(
                server.url,
                BodySource(pool=64),
                concurrency=4 * batch,
                duration_s=seconds,
                warmup_s=min(10, seconds / 2),
            )
    return {"worker": worker, "batch": batch, **result.__dict__}


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"## GPU ({meta['device_name']})" + (" — CPU dry run, not a GPU figure" if meta["dry_run"] else ""),
        "",
        f"{meta['date']}; model `init-model --size {meta['size']}`; torch {meta['torch']}, "
        f"transformers {meta['transformers']}; beam 3, max length 20; wall time {meta.get('wall_s', 'n/a')} s.",
        "",
        "| dtype | compile | batch | images/s | p50 ms | p99 ms | first batch s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["model"]:
        for size, p in run["points"].items():
            if "skipped" in p:
                lines.append(f"| {run['dtype']} | {run['compile']} | {size} | skipped ({p['skipped']}) | | | |")
            else:
                lines.append(
                    f"| {run['dtype']} | {run['compile']} | {size} | {p['images_per_s']:,.1f} | {p['p50_ms']:,.1f} "
                    f"| {p['p99_ms']:,.1f} | {p['first_batch_s']:.1f} |"
                )
    for run in results.get("server", []):
        if "skipped" in run or "error" in run:
            lines.append(f"\nServer, worker {run['worker']}: {run.get('skipped') or run.get('error')}")
            continue
        lines.append(
            f"\nOur server end to end (worker `{run['worker']}`, max_batch_size {run['batch']}, "
            f"{run['concurrency']} clients): {run['throughput_rps']:,.1f} req/s, p50 {run['p50_ms']:,.0f} ms, "
            f"p99 {run['p99_ms']:,.0f} ms, mean batch {run['mean_batch_size'] or 0:.1f}."
        )
    best = max(
        (p["images_per_s"] for run in results["model"] for p in run["points"].values() if "images_per_s" in p),
        default=0.0,
    )
    lines += ["", f"Best raw-model throughput: {best:,.1f} images/s (goal on an H200: >= 1,000 at beam 3)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks the script anywhere")
    parser.add_argument("--budget", type=float, default=450, help="seconds for everything (default 450)")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "captioner-bench")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md is")
    parser.add_argument("--out", type=Path, help="also copy the results and benchmarks.md here (e.g. $OUT)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = Deadline(args.budget)

    import torch
    import transformers

    from bench import harness, report

    dry = args.dry_run or not torch.cuda.is_available()
    if not args.dry_run and dry:
        print("no CUDA device: running the CPU dry run instead", flush=True)
    size, device = ("tiny", "cpu") if dry else ("base", "cuda")
    dtypes = ["float32", "bfloat16"] if dry else ["float16", "bfloat16"]
    batches = [1, 2, 4] if dry else [1, 8, 32, 64, 128]
    backend = "eager" if dry else "inductor"  # the dry run checks the compiled path's plumbing, not inductor
    point_s = 1.0 if dry else 4.0
    model_dir = harness.ensure_model(args.models, size)
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "dry_run": dry,
            "size": size,
            "device_name": torch.cuda.get_device_name(0) if not dry else "CPU",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "model": [],
        "server": [],
    }
    results_path = ROOT / "bench" / "results" / ("gpu-dry-run.json" if dry else "gpu.json")

    def save() -> None:
        """After every phase, so that a run cut short by the time limit still leaves its figures."""
        results["meta"]["wall_s"] = round(time.monotonic() - started)
        target = args.docs / "benchmarks.md"
        text = target.read_text() if target.exists() else "# Benchmarks\n"
        args.docs.mkdir(parents=True, exist_ok=True)
        target.write_text(report.replace_block(text, "gpu", render(results)))
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / results_path.name).write_text(results_path.read_text())
            (args.out / "benchmarks.md").write_text(target.read_text())

    # The model runs the issue asks for first (eager, then compiled), then our server end to end if time is left.
    phases: list[tuple[str, Any]] = [("model", (dtype, compiled)) for compiled in (False, True) for dtype in dtypes]
    phases += [("server", worker) for worker in ("thread", "process")]
    server_s = 8.0 if dry else 20.0
    for index, (kind, what) in enumerate(phases):
        # Keep enough time for the model runs still to come: about 45 s each on the GPU.
        model_runs_left = sum(1 for later, _ in phases[index:] if later == "model")
        min_left = (15 if dry else 45) * model_runs_left
        if kind == "server":
            if deadline.left() < server_s + (30 if dry else 60):
                results["server"].append({"worker": what, "skipped": "time budget"})
                continue
            print(f"  our server, model.worker = {what}", flush=True)
            try:
                run = measure_server(model_dir, device=device, dtype=dtypes[0], worker=what,
                                     batch=4 if dry else 64, seconds=server_s)  # fmt: skip
            except Exception as exc:
                run = {"worker": what, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            results["server"].append(run)
            save()
            continue
        dtype, compiled = what
        label = f"{dtype}, {'torch.compile' if compiled else 'eager'}"
        if deadline.left() < min_left:
            print(f"  {label}: skipped (time budget)", flush=True)
            results["model"].append(
                {"dtype": dtype, "compile": compiled, "points": {"all": {"skipped": "time budget"}}}
            )
            continue
        print(f"  {label}", flush=True)
        try:
            run = measure_model(
                model_dir, device=device, dtype=dtype, compile_backend=backend if compiled else None,
                batches=batches, point_s=point_s, deadline=deadline, min_left_s=max(10, min_left - 45),
            )  # fmt: skip
        except Exception as exc:  # one failed configuration must not lose the others' figures
            print(f"    failed: {type(exc).__name__}: {exc}", flush=True)
            run = {"points": {"all": {"skipped": f"failed: {type(exc).__name__}: {str(exc)[:200]}"}}}
        results["model"].append({"dtype": dtype, "compile": compiled, **run})
        save()
    save()
    target = args.docs / "benchmarks.md"
    print(f"wrote {target} and {results_path} in {results['meta']['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
