"""Static against continuous batching (``batching.mode``), side by side in one run, for one model folder.

    python -m bench.continuous --model ~/.cache/captioner-bench/tiny [--window 10] [--quick]

Each mode's server runs alone on loopback (``captioner serve``, default settings but ``batching.mode``), with the
same photos, in this order:
- the model's own time for one image (``bench.limit --batch 1``: ``caption_batch`` of one, no HTTP);
- per mode: one client at a time (p50), then 16 and 64 closed-loop clients (saturated throughput);
- per mode: open loop at 80 % of static mode's saturated throughput (the better of 16 and 64 clients): p99.
Printed as ratios against issue 23's goals (continuous p99 at most 0.5x static's; throughput at least static's
at 16 and at 64 clients; one client's p50 at most 1.2x the model's own time); raw figures to
bench/results/continuous-<model>.json (git-ignored). Run it on a quiet machine: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness
from bench.images import photo
from bench.loadgen import BodySource

MODES = ("static", "continuous")
OPEN_LOOP_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class Goal:
    name: str
    ratio: float | None
    limit: float
    at_most: bool  # True: the ratio must not exceed ``limit``; False: must reach it

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio <= self.limit if self.at_most else self.ratio >= self.limit

    def line(self) -> str:
        shown = "   n/a" if self.ratio is None else f"{self.ratio:6.2f}x"
        verdict = {True: "met", False: "NOT met", None: "no figure"}[self.met]
        bound = f"{'<=' if self.at_most else '>='} {self.limit:g}x"
        return f"  {self.name:48} {shown}  (goal {bound}: {verdict})"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def goals(results: dict[str, Any]) -> list[Goal]:
    """Issue 23's goals as ratios of continuous mode's figures to static mode's (or to the model's own time)."""
    static, continuous = results["static"], results["continuous"]
    single_ms = results["model_single_image_ms"]
    return [
        Goal("open-loop p99, continuous / static", _ratio(continuous["open"]["p99_ms"], static["open"]["p99_ms"]),
             0.5, at_most=True),
        Goal("throughput at 16 clients, continuous / static",
             _ratio(continuous["c16"]["throughput_rps"], static["c16"]["throughput_rps"]), 1.0, at_most=False),
        Goal("throughput at 64 clients, continuous / static",
             _ratio(continuous["c64"]["throughput_rps"], static["c64"]["throughput_rps"]), 1.0, at_most=False),
        Goal("one client p50, continuous / model's own time", _ratio(continuous["c1"]["p50_ms"], single_ms),
             1.2, at_most=True),
        Goal("one client p50, static / model's own time (for reference)", _ratio(static["c1"]["p50_ms"], single_ms),
             1.2, at_most=True),
    ]  # fmt: skip


def open_loop_rate(static: dict[str, Any]) -> float:
    """80 % of static mode's saturated throughput (the better of its 16- and 64-client figures)."""
    saturated = max(static["c16"]["throughput_rps"], static["c64"]["throughput_rps"])
    return float(round(OPEN_LOOP_SHARE * saturated, 1))


class Bench:
    def __init__(self, model: Path, workdir: Path, window_s: float, warmup_s: float, clients: tuple[int, ...]) -> None:
        self.model = model
        self.workdir = workdir
        self.window_s = window_s
        self.warmup_s = warmup_s
        self.clients = clients
        self.photos = [photo(seed) for seed in range(64)]
        self._serial = 0

    def config(self, mode: str) -> Path:
        return harness.write_config(self.workdir, mode, self.model, batching={"mode": mode})

    def load(self, url: str, **kwargs: Any) -> dict[str, Any]:
        self._serial += 10_000_000  # fresh bytes for every measurement: nothing is a cache hit
        source = BodySource(body_format="json", photos=self.photos, first_serial=self._serial)
        result = harness.measure(url, source, duration_s=self.window_s, warmup_s=self.warmup_s, **kwargs)
        return dataclasses.asdict(result)

    def single_image_ms(self) -> float:
        command = [harness.PYTHON, "-m", "bench.limit", "--config", str(self.config("static")), "--json"]
        command += ["--batch", "1", "--duration", str(max(2.0, self.window_s))]
        result = harness.run_json(command)
        print(f"  the model's own time for one image: {result['batch_ms_p50']:.1f} ms (p50)", flush=True)
        return float(result["batch_ms_p50"])

    def closed(self, mode: str) -> dict[str, Any]:
        print(f"  {mode}: closed loop", flush=True)
        with harness.serve("ours", self.config(mode), self.workdir) as server:
            return {f"c{n}": self.load(server.url, concurrency=n) for n in self.clients}

    def open(self, mode: str, rate: float) -> dict[str, Any]:
        print(f"  {mode}: open loop at {rate:g} req/s", flush=True)
        with harness.serve("ours", self.config(mode), self.workdir) as server:
            return self.load(server.url, rate=rate)

    def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"model": str(self.model), "window_s": self.window_s}
        results["model_single_image_ms"] = self.single_image_ms()
        for mode in MODES:
            results[mode] = self.closed(mode)
        rate = open_loop_rate(results["static"])
        results["open_loop_rps"] = rate
        for mode in MODES:
            results[mode]["open"] = self.open(mode, rate)
        results["goals"] = [dataclasses.asdict(g) | {"met": g.met} for g in goals(results)]
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.continuous", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder (e.g. captioner init-model's)")
    parser.add_argument("--window", type=float, default=10.0, help="measured seconds per load point")
    parser.add_argument("--warmup", type=float, default=2.5, help="unmeasured seconds before each window")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1-second windows")
    parser.add_argument("--out", type=Path, help="the JSON results (default: bench/results/continuous-<model>.json)")
    args = parser.parse_args(argv)
    window, warmup = (1.0, 0.5) if args.quick else (args.window, args.warmup)
    model = args.model.expanduser().resolve()
    out = args.out or harness.ROOT / "bench" / "results" / f"continuous-{model.name}.json"
    print(f"static against continuous batching, model {model}", flush=True)
    with tempfile.TemporaryDirectory(prefix="captioner-bench-continuous-") as workdir:
        results = Bench(model, Path(workdir), window, warmup, (1, 16, 64)).run()
    print(f"\nopen loop at {results['open_loop_rps']:g} req/s (80 % of static's saturated throughput):")
    for goal in goals(results):
        print(goal.line())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
