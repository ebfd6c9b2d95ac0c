"""GPU benchmark for a lent H200 (run through bench/gpu.sh): BLIP-base, beam 3, max length 20.

    bench/gpu.sh                 # on the GPU machine, <= ~9.5 min: every phase below, figures to --out
    bench/gpu.sh --dry-run       # anywhere: the tiny model on the CPU, every phase, ~2-3 min; no docs written

Phases, each under one global deadline (a phase that would not fit is recorded as skipped):
1. raw model, one GPU option on or off at a time (``OPTIONS``): images/s and batch p50/p99 at batch sizes up to
   128, first-batch time (compilation included), peak memory, and each option's captions on the same images
   against float32's (share of equal captions, largest confidence gap among them);
2. JPEG decoding on the device (nvJPEG, batched) against Pillow on every core: images/s, and the pixel gap to
   Pillow's default and full-scale paths, in grey levels of 255;
3. ``batching.auto_batch_size``: the batch size chosen from GPU memory;
4. our server end to end (JPEG bodies; device decoding on the thread worker it needs, CPU decoding with the
   default process worker): saturated img/s (closed loop), and p99 at 500 img/s offered (open loop, Poisson);
   the goal is >= 1,000 img/s and p99 < 1 s;
5. a short fine-tune with ``captioner train`` when the checkout has it.

No network: the model is ``captioner init-model --size base`` (BLIP-base's exact architecture, random weights),
written once to ``--models``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# name -> model.* settings; "reference" is the defaults (float16 weights on a GPU, SDPA, dynamic cache, eager).
OPTIONS: dict[str, dict[str, Any]] = {
    "float32": {"dtype": "float32"},
    "reference": {},
    "bfloat16": {"dtype": "bfloat16"},
    "autocast-float16": {"autocast": "float16"},
    "autocast-bfloat16": {"autocast": "bfloat16"},
    "attention-eager": {"attention": "eager"},
    "static-cache": {"kv_cache": "static"},
    "static-cache-compiled": {"kv_cache": "static", "compile": True},
}


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def plan(dry: bool) -> dict[str, Any]:
    """What to run: the GPU plan, or the same phases shrunk to the tiny model on the CPU."""
    if dry:
        return {"size": "tiny", "device": "cpu", "compile_backend": "eager", "point_s": 0.5, "parity_images": 6,
                "batches": {"reference": [1, 2, 4], "other": [4]}, "jpeg": (32, 8), "auto_limit": 128,
                "server": {"concurrency": 8, "rate": 20.0, "seconds": 4.0, "warmup_s": 2.0, "max_batch": 8},
                "finetune": {"steps": 3, "batch": 4, "images": 16}}  # fmt: skip
    return {"size": "base", "device": "cuda", "compile_backend": "inductor", "point_s": 3.0, "parity_images": 64,
            "batches": {"reference": [1, 8, 32, 64, 128], "other": [64, 128]}, "jpeg": (512, 64),
            "auto_limit": 128,
            "server": {"concurrency": 512, "rate": 500.0, "seconds": 20.0, "warmup_s": 10.0, "max_batch": 128},
            "finetune": {"steps": 30, "batch": 32, "images": 256}}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from bench import gpu_phases, harness
    from bench.images import photo

    dry = args.dry_run or not torch.cuda.is_available()
    if not args.dry_run and dry:
        print("no CUDA device: running the CPU dry run instead", flush=True)
    p = plan(dry)
    deadline = Deadline(args.budget)
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": dry, "size": p["size"],
            "device_name": torch.cuda.get_device_name(0) if not dry else "CPU", "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "options": {}, "jpeg": None, "auto_batch": None, "server": [], "finetune": None,
    }  # fmt: skip
    out = args.out or ROOT / "bench" / "results"
    name = "gpu-dry-run.json" if dry else "gpu.json"

    def save() -> None:
        """After every phase, so that a run cut short by the time limit still leaves its figures."""
        results["meta"]["wall_s"] = round(time.monotonic() - started)
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(results, indent=1, default=str))
        (out / name.replace(".json", ".md")).write_text(render(results))

    def phase(key: str, need_s: float, fn: Any, *fn_args: Any, **kwargs: Any) -> Any:
        if deadline.left() < need_s:
            print(f"  {key}: skipped (time budget)", flush=True)
            return {"skipped": "time budget"}
        print(f"  {key}", flush=True)
        try:
            return fn(*fn_args, **kwargs)
        except Exception as exc:  # one failed phase must not lose the others' figures
            print(f"    failed: {type(exc).__name__}: {exc}", flush=True)
            return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}

    model_dir = harness.ensure_model(args.models, p["size"])
    device = p["device"]
    images = [photo(seed) for seed in range(p["parity_images"])]
    reference: list[list[Any]] | None = None
    # Keep ~40 % of the budget for the phases after the options (GPU: JPEG ~30 s, auto ~15 s, server ~90 s).
    reserve = args.budget * 0.4
    for option, model in OPTIONS.items():
        batches = p["batches"]["reference" if option == "reference" else "other"]
        run_result = phase(
            f"option {option}", reserve + 20, gpu_phases.measure_option, model_dir, device=device, options=model,
            batches=[] if option == "float32" else batches, point_s=p["point_s"], parity_images=images,
            reference=reference, compile_backend=p["compile_backend"],
            left=lambda: deadline.left() - reserve,
        )  # fmt: skip
        captions = run_result.pop("captions", None)
        if option == "float32":
            reference = captions
        results["options"][option] = {"model": model, **run_result}
        save()
    count, batch = p["jpeg"]
    results["jpeg"] = phase("JPEG decoding", 30, gpu_phases.jpeg_decoding, model_dir, device=device, count=count,
                            batch=batch)  # fmt: skip
    save()
    results["auto_batch"] = phase("auto batch size", 20, gpu_phases.auto_batch, model_dir, device=device,
                                  limit=p["auto_limit"])  # fmt: skip
    save()
    chosen = results["auto_batch"].get("chosen") if isinstance(results["auto_batch"], dict) else None
    s = p["server"]
    batching = {"max_batch_size": chosen or s["max_batch"], "max_queue": 8 * s["max_batch"],
                "request_timeout_s": 60}  # fmt: skip
    # Device JPEG decoding needs the thread worker; both batching modes (issue 23) on the default worker.
    for model, mode in (({"jpeg_decode": "device", "worker": "thread"}, "static"), ({"jpeg_decode": "cpu"}, "static"),
                        ({"jpeg_decode": "cpu"}, "continuous")):  # fmt: skip
        served = phase(
            f"our server {model} batching.mode {mode}", 2 * s["seconds"] + 60, gpu_phases.server, model_dir,
            device=device, model=model, batching={**batching, "mode": mode}, concurrency=s["concurrency"],
            rate=s["rate"], seconds=s["seconds"], warmup_s=s["warmup_s"],
        )  # fmt: skip
        results["server"].append(served)
        save()
    f = p["finetune"]
    results["finetune"] = phase("fine-tune", 60, gpu_phases.finetune, model_dir, device=device, steps=f["steps"],
                                batch=f["batch"], images=f["images"])  # fmt: skip
    save()
    print(f"wrote {out / name} and {out / name.replace('.json', '.md')} in {results['meta']['wall_s']} s")
    return results


def _fmt(value: Any, spec: str = ",.1f") -> str:
    return "" if value is None else format(value, spec)


def render(results: dict[str, Any]) -> str:
    """The figures as the page's "gpu" block (bench/gpu.sh --docs writes it into docs/benchmarks.md)."""
    meta = results["meta"]
    lines = [
        f"## GPU ({meta['device_name']})" + (" — CPU dry run, not a GPU figure" if meta["dry_run"] else ""),
        "",
        f"{meta['date']}; model `init-model --size {meta['size']}`; torch {meta['torch']}, transformers "
        f"{meta['transformers']}; beam 3, max length 20; wall time {meta.get('wall_s', 'n/a')} s.",
        "",
        "Raw model, one option at a time (captions against float32's on the same images):",
        "",
        "| option | batch | images/s | p50 ms | p99 ms | first batch s | same caption | max conf. gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for option, run in results["options"].items():
        if "skipped" in run or "error" in run:
            lines.append(f"| {option} | {run.get('skipped') or run.get('error')} | | | | | | |")
            continue
        par = run.get("parity") or {}
        same, gap = _fmt(par.get("same_caption"), ".0%"), _fmt(par.get("max_confidence_gap"), ".4f")
        for size, point in run["points"].items():
            if "skipped" in point:
                lines.append(f"| {option} | {size} | skipped ({point['skipped']}) | | | | {same} | {gap} |")
                continue
            lines.append(
                f"| {option} | {size} | {_fmt(point['images_per_s'])} | {_fmt(point['p50_ms'])} "
                f"| {_fmt(point['p99_ms'])} | {_fmt(point['first_batch_s'])} | {same} | {gap} |"
            )
        if not run["points"]:
            lines.append(f"| {option} | (reference for captions) | | | | | | |")
    jpeg = results.get("jpeg") or {}
    if "pillow_images_per_s" in jpeg:
        lines += ["", (
            f"JPEG decoding, {jpeg['images']} 640x480 photos: Pillow on {jpeg['threads']} threads "
            f"{_fmt(jpeg['pillow_images_per_s'])} img/s; on the device "
            f"{_fmt(jpeg['device_decode_images_per_s'])} img/s, after the 1/8-scale check pass on the threads "
            f"({_fmt(jpeg['check_pass_images_per_s'])} img/s). Pixels against Pillow's default path: mean "
            f"{_fmt(jpeg['mean_levels_vs_pillow_draft'], '.2f')}, max {_fmt(jpeg['max_levels_vs_pillow_draft'])} "
            f"grey levels of 255; against Pillow at full scale: mean "
            f"{_fmt(jpeg['mean_levels_vs_pillow_full'], '.2f')}, max {_fmt(jpeg['max_levels_vs_pillow_full'])}."
        )]  # fmt: skip
    elif jpeg:
        lines += ["", f"JPEG decoding: {jpeg.get('skipped') or jpeg.get('error')}"]
    auto = results.get("auto_batch") or {}
    if "chosen" in auto:
        chosen = auto["chosen"] if auto["chosen"] is not None else "nothing (no GPU: max_batch_size stays)"
        free_gib = f", {_fmt(auto['free_gib'])} GiB free" if auto.get("free_gib") else ""
        lines += ["", f"`batching.auto_batch_size`: chose {chosen} (limit {auto['limit']}){free_gib}."]
    elif auto:
        lines += ["", f"`batching.auto_batch_size`: {auto.get('skipped') or auto.get('error')}"]
    for run in results.get("server", []):
        if "closed" not in run:
            lines += ["", f"Our server: {run.get('skipped') or run.get('error')}"]
            continue
        c, o = run["closed"], run["open"]
        lines += ["", (
            f"Our server {run['model']} (batching.mode {run['batching'].get('mode', 'static')}, max_batch_size "
            f"{run['batching']['max_batch_size']}): "
            f"{_fmt(c['throughput_rps'])} img/s at {c['concurrency']} clients (p99 {_fmt(c['p99_ms'], ',.0f')} ms, "
            f"mean batch {_fmt(c.get('mean_batch_size'))}); at {_fmt(o['offered_rps'], ',.0f')} img/s offered: "
            f"{_fmt(o['throughput_rps'])} served, p50 {_fmt(o['p50_ms'], ',.0f')} ms, p99 "
            f"{_fmt(o['p99_ms'], ',.0f')} ms. Goal: >= 1,000 img/s, p99 < 1 s at 500 img/s."
        )]  # fmt: skip
    tune = results.get("finetune") or {}
    if tune:
        text = (f"{tune['steps']} steps of batch {tune['batch']} in {_fmt(tune['seconds'])} s "
                f"({_fmt(tune['steps_per_s'], '.2f')} steps/s)") if "steps_per_s" in tune else (
                tune.get("skipped") or tune.get("error"))  # fmt: skip
        lines += ["", f"Fine-tune (`captioner train`): {text}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks the script anywhere")
    parser.add_argument("--budget", type=float, default=540, help="seconds for everything (default 540)")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "captioner-bench")
    parser.add_argument("--out", type=Path, help="where the JSON and markdown go (default bench/results)")
    parser.add_argument("--docs", action="store_true", help="also write the figures into docs/benchmarks.md")
    args = parser.parse_args(argv)
    results = run(args)
    if args.docs:
        from bench import report

        target = ROOT / "docs" / "benchmarks.md"
        target.write_text(report.replace_block(target.read_text(), "gpu", render(results)))
        print(f"wrote the gpu block of {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
