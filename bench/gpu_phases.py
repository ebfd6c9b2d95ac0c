"""The measurements bench/gpu.py runs, one function per phase, each returning plain data for the JSON and the page.

Every phase loads what it needs itself (a model per option, freed afterwards), so one that fails or is cut by the
time budget leaves the others' figures intact.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bench import harness
from bench.images import photo
from bench.loadgen import BodySource


def settings_for(model_dir: Path, device: str, **model: Any) -> Any:
    from captioner.config import load_settings

    return load_settings(None, {}).replace("model", path=str(model_dir), device=device, **model)


def load(model_dir: Path, device: str, compile_backend: str, **model: Any) -> Any:
    """A BlipCaptioner with ``model`` options; ``compile: true`` is applied with ``compile_backend``."""
    from captioner.model import acceleration
    from captioner.model.blip import BlipCaptioner

    compiled = bool(model.pop("compile", False))
    settings = settings_for(model_dir, device, **model)
    captioner = BlipCaptioner(Path(model_dir), settings.model, settings.generation, settings.limits.max_pixels)
    if compiled:
        static = model.get("kv_cache") == "static"
        acceleration.compile_model(captioner._model, backend=compile_backend, static_shapes=static)
    return captioner


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def jobs_for(captioner: Any, images: list[bytes]) -> list[Any]:
    from captioner.model.protocol import CaptionJob

    return [CaptionJob.of(captioner.preprocess(data)) for data in images]


def parity(got: list[list[Any]], want: list[list[Any]]) -> dict[str, Any]:
    """How close an option's captions are to the float32 reference's: equal top captions, confidence gaps."""
    same = [a[0].confidence - b[0].confidence for a, b in zip(got, want, strict=True) if a[0].text == b[0].text]
    return {
        "images": len(want),
        "same_caption": len(same) / len(want),
        "max_confidence_gap": max((abs(gap) for gap in same), default=None),
    }


def measure_option(
    model_dir: Path, *, device: str, options: dict[str, Any], batches: list[int], point_s: float,
    parity_images: list[bytes], reference: list[list[Any]] | None, compile_backend: str, left: Any,
) -> dict[str, Any]:  # fmt: skip
    """Raw-model throughput and batch latency of one option, and its captions against the reference's."""
    loaded = time.perf_counter()
    captioner = load(model_dir, device, compile_backend, **dict(options))
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - loaded, 1), "dtype": captioner.dtype, "points": {}}
    parity_jobs = jobs_for(captioner, parity_images)
    captions = captioner.caption_batch(parity_jobs)
    if reference is not None:
        out["parity"] = parity(captions, reference)
    for size in batches:
        if left() < 20:
            out["points"][str(size)] = {"skipped": "time budget"}
            continue
        jobs = [parity_jobs[i % len(parity_jobs)] for i in range(size)]
        started = time.perf_counter()
        captioner.caption_batch(jobs)  # warm-up (and, compiled, the compilation for this padded size)
        sync(device)
        first_s = time.perf_counter() - started
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - began < point_s and len(times) < 200):
            t0 = time.perf_counter()
            captioner.caption_batch(jobs)
            sync(device)
            times.append(time.perf_counter() - t0)
            if left() < 10:
                break
        times.sort()
        out["points"][str(size)] = {
            "images_per_s": size * len(times) / sum(times),
            "p50_ms": statistics.median(times) * 1000,
            "p99_ms": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))] * 1000,
            "batches": len(times),
            "first_batch_s": first_s,
        }
        p = out["points"][str(size)]
        print(f"    batch {size:>3}: {p['images_per_s']:8.1f} img/s  p50 {p['p50_ms']:7.1f} ms  "
              f"p99 {p['p99_ms']:7.1f} ms  (first {first_s:.1f} s)", flush=True)  # fmt: skip
    if device.startswith("cuda"):
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    out["captions"] = captions
    del captioner
    free(device)
    return out


def jpeg_decoding(model_dir: Path, *, device: str, count: int, batch: int) -> dict[str, Any]:
    """``model.jpeg_decode: device`` against Pillow on every core: pixels (grey levels of 255) and images/s."""
    from captioner.model import device_jpeg
    from captioner.model.preprocessing import ImagePreprocessor

    pre = ImagePreprocessor.from_pretrained(model_dir, max_pixels=40_000_000)
    full = ImagePreprocessor.from_pretrained(model_dir, max_pixels=40_000_000)
    full.jpeg_draft = False
    decoder = device_jpeg.DeviceJpegDecoder(pre, torch.device(device))
    images = [photo(seed) for seed in range(count)]  # 640x480 JPEGs, as the server benchmarks send
    std = torch.tensor(pre._std).view(3, 1, 1)  # std on the 0..255 scale: a normalised gap times it = grey levels
    deferred = [device_jpeg.defer(pre, data) for data in images[:batch]]
    on_device = decoder([p.jpeg for p in deferred])
    gaps: dict[str, list[float]] = {"draft": [], "full": []}
    worst: dict[str, float] = {"draft": 0.0, "full": 0.0}
    for data, mine in zip(images[:batch], on_device, strict=True):
        for name, reference in (("draft", pre), ("full", full)):
            levels = (mine.float().cpu() - reference(data).pixel_values).abs() * std
            gaps[name].append(float(levels.mean()))
            worst[name] = max(worst[name], float(levels.max()))
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        list(pool.map(pre, images))
        pillow_s = time.perf_counter() - started
        started = time.perf_counter()
        prepared = list(pool.map(lambda data: device_jpeg.defer(pre, data), images))
        checked_s = time.perf_counter() - started
    started = time.perf_counter()
    for first in range(0, count, batch):
        decoder([p.jpeg for p in prepared[first : first + batch]])
    sync(device)
    device_s = time.perf_counter() - started
    return {
        "images": count,
        "threads": workers,
        "pillow_images_per_s": count / pillow_s,
        "check_pass_images_per_s": count / checked_s,  # the 1/8-scale pass on the threads
        "device_decode_images_per_s": count / device_s,  # the batched decode + resize on the device
        "mean_levels_vs_pillow_draft": statistics.mean(gaps["draft"]),
        "max_levels_vs_pillow_draft": worst["draft"],
        "mean_levels_vs_pillow_full": statistics.mean(gaps["full"]),
        "max_levels_vs_pillow_full": worst["full"],
    }


def auto_batch(model_dir: Path, *, device: str, limit: int) -> dict[str, Any]:
    captioner = load(model_dir, device, "eager")
    captioner.warm_up()
    started = time.perf_counter()
    size = captioner.measure_batch_limit(limit)
    out = {"limit": limit, "chosen": size, "seconds": time.perf_counter() - started}
    if device.startswith("cuda"):
        out["free_gib"] = torch.cuda.mem_get_info()[0] / 2**30
    del captioner
    free(device)
    return out


def server(
    model_dir: Path, *, device: str, model: dict[str, Any], batching: dict[str, Any], concurrency: int, rate: float,
    seconds: float, warmup_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Our server end to end: closed loop (saturation), then open loop (Poisson) at ``rate``; raw JPEG bodies."""
    with tempfile.TemporaryDirectory() as tmp:
        config = harness.write_config(
            Path(tmp), "gpu", model_dir, model={"device": device, **model}, batching=batching,
            server={"preprocess_workers": max(2, (os.cpu_count() or 4) - 2)},
        )  # fmt: skip
        with harness.serve("ours", config, Path(tmp)) as running:
            source = BodySource(body_format="raw", pool=64)
            closed = harness.measure(running.url, source, concurrency=concurrency, duration_s=seconds,
                                     warmup_s=warmup_s)  # fmt: skip
            opened = harness.measure(running.url, source, rate=rate, duration_s=seconds, warmup_s=warmup_s / 2)
    return {"model": model, "batching": batching, "closed": closed.__dict__, "open": opened.__dict__}


def finetune(model_dir: Path, *, device: str, steps: int, batch: int, images: int) -> dict[str, Any]:
    """A short fine-tune with ``captioner train`` (when this checkout has it): steps/s on this device."""
    python = [harness.PYTHON, "-m", "captioner"]
    if subprocess.run([*python, "train", "--help"], capture_output=True, cwd=harness.ROOT).returncode != 0:
        return {"skipped": "`captioner train` is not in this checkout"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([*python, "data", "synth", "--out", str(data), "--images", str(images)], check=True,
                       capture_output=True, cwd=harness.ROOT)  # fmt: skip
        env = {**os.environ, "CAPTIONER_MODEL__PATH": str(model_dir), "CAPTIONER_MODEL__DEVICE": device}
        started = time.perf_counter()
        done = subprocess.run(
            [*python, "train", "--annotations", str(data / "captions.json"), "--images", str(data),
             "--out", str(Path(tmp) / "out"), "--max-steps", str(steps), "--batch-size", str(batch)],
            capture_output=True, text=True, cwd=harness.ROOT, env=env,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        shutil.rmtree(data, ignore_errors=True)
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    return {"steps": steps, "batch": batch, "seconds": seconds, "steps_per_s": steps / seconds}
