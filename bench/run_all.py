"""Every yardstick of issue 5, side by side in one run, written to docs/benchmarks.md and a plot.

    bench/run_all            # full: tiny and small models, every server, ~18 min on 2 cores
    bench/run_all --quick    # smoke: tiny model only, short windows, < 2 min

Each server runs in turn, alone, on loopback, loading the same untrained BLIP (``captioner init-model``, cached
in ``--models``) from the same config file. The load generator runs in this process (uvloop, raw HTTP).
Raw results go to bench/results/latest.json (git-ignored); the report and the plot are rebuilt from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness, profile
from bench.images import photo
from bench.loadgen import BodySource
from bench.report import OLD_DEFAULTS

ROOT = harness.ROOT


@dataclasses.dataclass(frozen=True)
class Plan:
    window_s: float  # measured seconds per load point
    warmup_s: float
    sweep: tuple[int, ...]  # closed-loop concurrencies
    limit_s: float
    cache_s: float
    large_requests: int  # per size, for the 12 MP yardstick
    small: bool  # the 384 px model (slow on CPU)
    variants: bool  # optimisation before/after runs, and the max_wait_ms = 0 server
    profile_s: float


QUICK = Plan(2.5, 1.0, (1, 16, 64), 3.0, 2.0, 3, False, False, 0.0)
FULL = Plan(10.0, 2.5, (1, 4, 16, 64), 12.0, 6.0, 6, True, True, 5.0)


class Runner:
    def __init__(self, plan: Plan, workdir: Path, models: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.models = models
        self.photos = [photo(seed) for seed in range(64)]
        self._serial = 0
        self.results: dict[str, Any] = {}

    def source(
        self, *, repeat: bool = False, body_format: str = "json", photos: list[bytes] | None = None
    ) -> BodySource:
        # Fresh serial numbers for every measurement: a server never sees the same bytes twice unless asked.
        self._serial += 10_000_000
        return BodySource(
            body_format=body_format, photos=photos or self.photos, repeat=repeat, first_serial=self._serial
        )

    def load(
        self, url: str, concurrency: int | None = None, rate: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        kwargs.setdefault("duration_s", self.plan.window_s)
        kwargs.setdefault("warmup_s", self.plan.warmup_s)
        source = kwargs.pop("source", None) or self.source()
        result = harness.measure(url, source, concurrency=concurrency, rate=rate, **kwargs)
        return dataclasses.asdict(result)

    def sweep(self, url: str) -> list[dict[str, Any]]:
        return [self.load(url, concurrency=c) for c in self.plan.sweep]

    def limit(self, config: Path, env: dict[str, str] | None = None, duration_s: float | None = None) -> dict[str, Any]:
        command = [harness.PYTHON, "-m", "bench.limit", "--config", str(config), "--json"]
        command += ["--duration", str(duration_s or self.plan.limit_s)]
        result = harness.run_json(command, env=env)
        print(f"    limit: {result['images_per_s']:.2f} images/s at batch {result['batch_size']}", flush=True)
        return result

    def profiled(self, server: harness.Server, **load: Any) -> dict[str, Any] | None:
        """A py-spy profile of ``server`` under ``load`` (a separate, unmeasured run)."""
        if not self.plan.profile_s or not profile.available():
            return None
        load.setdefault("duration_s", self.plan.profile_s + 2)
        load.setdefault("warmup_s", 0.5)
        import threading

        box: list[profile.Profile | None] = []
        spy = threading.Thread(target=lambda: box.append(profile.profile_pid(server.process.pid, self.plan.profile_s)))
        spy.start()
        self.load(server.url, **load)
        spy.join()
        found = box[0] if box else None
        if found is None:
            return None
        print(f"    py-spy: {found.line(6)}", flush=True)
        return dataclasses.asdict(found)

    # -- the scenarios -------------------------------------------------------------------------------

    def tiny(self) -> None:
        model = harness.ensure_model(self.models, "tiny")
        base = harness.write_config(self.workdir, "tiny", model)
        out: dict[str, Any] = {}
        print("tiny model: the limit (raw caption_batch loop)", flush=True)
        out["limit"] = self.limit(base)
        offered = round(0.5 * out["limit"]["images_per_s"], 1)
        out["offered_rps"] = offered

        print("tiny model: our server (captioner serve)", flush=True)
        with harness.serve("ours", base, self.workdir) as server:
            out["ours"] = {"sweep": self.sweep(server.url), "open": self.load(server.url, rate=offered)}
            out["ours"]["profile_saturation"] = self.profiled(server, concurrency=max(self.plan.sweep))
            out["ours"]["cache_hit"], out["response_bytes"] = self.cache_hits(server.url)
            out["ours"]["profile_cache_hit"] = self.profiled(
                server, concurrency=32, source=self.source(repeat=True, body_format="raw")
            )
            if not self.plan.small:
                self.results["large_photo"] = self.large_photo(server.url, "tiny")

        if self.plan.variants:
            print("tiny model: our server, batching.max_wait_ms = 0 (dispatch when the model is free)", flush=True)
            wait0 = harness.write_config(self.workdir, "tiny-wait0", model, batching={"max_wait_ms": 0})
            with harness.serve("ours", wait0, self.workdir) as server:
                out["ours_wait0"] = {"sweep": self.sweep(server.url), "open": self.load(server.url, rate=offered)}

        print("tiny model: naive Starlette, generate() per request", flush=True)
        with harness.serve("naive", base, self.workdir) as server:
            out["naive"] = {"sweep": self.sweep(server.url)}

        print("tiny model: LitServe 0.2.19, same batching settings", flush=True)
        with harness.serve("litserve", base, self.workdir) as server:
            out["litserve"] = {"sweep": self.sweep(server.url), "open": self.load(server.url, rate=offered)}

        print("tiny model: bare Starlette endpoint (cache-hit floor)", flush=True)
        args = ("--response-bytes", str(out["response_bytes"]))
        with harness.serve("bare", base, self.workdir, args=args) as server:
            out["bare"] = {"cache_hit": self.cache_hits(server.url)[0]}

        if self.plan.variants:
            print("tiny model: our server on asyncio + h11 (before uvloop/httptools)", flush=True)
            args = ("--loop", "asyncio", "--http", "h11")
            with harness.serve("ours-variant", base, self.workdir, args=args) as server:
                out["ours_asyncio_h11"] = {"cache_hit": self.cache_hits(server.url)[0]}
            out["server_variants"] = self.server_variants("tiny", model, concurrency=max(self.plan.sweep),
                                                          offered_rps=out["offered_rps"])  # fmt: skip
            out["limit_variants"] = self.limit_variants(base)
        print("tiny model: cache hits in server CPU per request (bench.hit_loopback)", flush=True)
        requests = str(int(self.plan.cache_s * 2000))  # ~5 s per server at ~100 µs a hit
        command = [harness.PYTHON, "-m", "bench.hit_loopback", "--requests", requests, "--models", str(self.models)]
        out["hit_cpu"] = harness.run_json(command)
        self.results["tiny"] = out

    def server_variants(self, size: str, model: Path, **load: Any) -> dict[str, Any]:
        """Our server at saturation with one model setting changed at a time: the candidates for the default
        configuration (docs/benchmarks.md, "Default configuration")."""
        cores = os.cpu_count() or 1
        offered = load.pop("offered_rps", None)
        variants = {
            f"model.num_threads={cores} (every core)": {"model": {"num_threads": cores}},
            "model.worker=thread": {"model": {"worker": "thread"}},
            "model.auto_threads=leave_one": {"model": {"auto_threads": "leave_one"}},
            OLD_DEFAULTS: {"model": {"worker": "thread", "auto_threads": "leave_one"}},
        }
        if size == "tiny":
            variants["server.preprocess_workers=1"] = {"server": {"preprocess_workers": 1}}
        results: dict[str, Any] = {}
        for index, (name, sections) in enumerate(variants.items()):
            print(f"{size} model: our server with {name}", flush=True)
            config = harness.write_config(self.workdir, f"{size}-variant{index}", model, **sections)
            with harness.serve("ours", config, self.workdir) as server:
                results[name] = {"saturation": self.load(server.url, **load)}
                if name == OLD_DEFAULTS and offered:  # also at the LitServe p99 comparison's load
                    results[name]["open"] = self.load(server.url, rate=offered)
        return results

    def limit_variants(self, config: Path, include_compile: bool = True) -> dict[str, Any]:
        """The raw model with one option changed at a time; "defaults" again first, measured alongside them."""
        cores = os.cpu_count() or 1
        variants: dict[str, dict[str, str]] = {
            "defaults": {},
            "model.attention=eager": {"CAPTIONER_MODEL__ATTENTION": "eager"},
            f"model.num_threads={cores} (every core)": {"CAPTIONER_MODEL__NUM_THREADS": str(cores)},
            "model.quantize=int8": {"CAPTIONER_MODEL__QUANTIZE": "int8"},
        }
        if include_compile:
            variants["model.compile=true"] = {"CAPTIONER_MODEL__COMPILE": "true"}
        results = {}
        for name, env in variants.items():
            print(f"  limit with {name}", flush=True)
            try:
                results[name] = self.limit(config, env=env)
            except (RuntimeError, OSError) as exc:
                print(f"    failed: {exc}", flush=True)
                results[name] = {"error": str(exc)[-500:]}
        return results

    def cache_hits(self, url: str) -> tuple[dict[str, Any], int]:
        """Requests/s when every request is the same (cached) image; also the size of the answer."""
        body = self.source(repeat=True, body_format="raw").next()
        status, answer = harness.request(url, "POST", "/api/v1/caption", *body)
        status, answer = harness.request(url, "POST", "/api/v1/caption", *body)
        if status != 200:
            raise RuntimeError(f"cache-hit probe answered {status}: {answer[:200]!r}")
        source = self.source(repeat=True, body_format="raw")
        result = self.load(url, concurrency=32, duration_s=self.plan.cache_s, warmup_s=1.0, source=source)
        return result, len(answer)

    def large_photo(self, url: str, model: str) -> dict[str, Any]:
        """End-to-end latency, one request at a time, of a 12 MP JPEG and of the same photo at 384 px."""
        from io import BytesIO

        from PIL import Image

        from bench.images import unique

        big = photo(7, 4000, 3000)
        buffer = BytesIO()
        Image.open(BytesIO(big)).resize((512, 384), Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=90)
        sizes = {"12mp": big, "384px": buffer.getvalue()}
        latencies: dict[str, list[float]] = {name: [] for name in sizes}
        for index in range(self.plan.large_requests + 1):
            for name, jpeg in sizes.items():  # interleaved, so drift in machine load hits both alike
                self._serial += 1
                started = time.perf_counter()
                status, _ = harness.request(url, "POST", "/api/v1/caption", unique(jpeg, self._serial), "image/jpeg")
                if status != 200:
                    raise RuntimeError(f"large-photo request answered {status}")
                if index:  # the first pair warms both paths up
                    latencies[name].append((time.perf_counter() - started) * 1000)
        result: dict[str, Any] = {"model": model, "requests": self.plan.large_requests}
        for name, values in latencies.items():
            result[name] = {"p50_ms": sorted(values)[len(values) // 2], "bytes": len(sizes[name])}
        result["ratio"] = result["12mp"]["p50_ms"] / result["384px"]["p50_ms"]
        print(
            f"    12 MP: p50 {result['12mp']['p50_ms']:.0f} ms, 384 px: p50 {result['384px']['p50_ms']:.0f} ms "
            f"(x{result['ratio']:.2f})",
            flush=True,
        )
        return result

    def small(self) -> None:
        model = harness.ensure_model(self.models, "small")
        config = harness.write_config(self.workdir, "small", model)
        out: dict[str, Any] = {}
        print("small model: the limit", flush=True)
        out["limit"] = self.limit(config, duration_s=20)
        print("small model: our server at saturation, and the 12 MP yardstick", flush=True)
        with harness.serve("ours", config, self.workdir) as server:
            out["ours"] = {"saturation": self.load(server.url, concurrency=32, duration_s=40, warmup_s=12)}
            self.results["large_photo"] = self.large_photo(server.url, "small")
        print("small model: optimisation variants (limit)", flush=True)
        out["limit_variants"] = self.limit_variants(config, include_compile=False)
        if self.plan.variants:
            out["server_variants"] = self.server_variants("small", model, concurrency=32, duration_s=40, warmup_s=12)
        self.results["small"] = out


def orjson_vs_json() -> dict[str, float]:
    """Microseconds to encode our success body with orjson and with the json module."""
    import timeit

    import orjson

    body = {
        "status": "success",
        "captions": [{"text": "a fluffy orange cat resting on a gray sofa", "confidence": 0.9213}],
        "model": "Salesforce/blip-image-captioning-base",
        "cached": False,
        "image_sha256": "ab" * 32,
    }
    n = 20000
    return {
        "orjson_us": timeit.timeit(lambda: orjson.dumps(body), number=n) / n * 1e6,
        "json_us": timeit.timeit(lambda: json.dumps(body).encode(), number=n) / n * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only, short windows (< 2 min)")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "captioner-bench")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md and the plot go")
    parser.add_argument("--no-docs", action="store_true", help="only write the JSON results")
    args = parser.parse_args(argv)
    from bench import report

    plan = QUICK if args.quick else FULL
    started = time.time()
    meta = report.machine_facts()
    meta["mode"] = "quick" if args.quick else "full"
    print(f"bench/run_all ({meta['mode']}) on {meta['cpu']}, load average {meta['load_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp:
        runner = Runner(plan, Path(tmp), args.models)
        runner.results["meta"] = meta
        runner.results["orjson"] = orjson_vs_json()
        runner.tiny()
        if plan.small:
            runner.small()
    meta["load_after"] = report.load_average()
    meta["wall_s"] = round(time.time() - started)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(runner.results, indent=1))
    print(f"results: {args.results} ({meta['wall_s']} s)")
    if not args.no_docs:
        written = report.write(runner.results, args.docs)
        print("wrote " + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in written))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
