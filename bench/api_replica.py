"""An ``api``-role replica (no model: it relays captions through the job queue) of two commits, side by side:
seconds from ``exec`` to ``/readyz`` 200, resident memory once ready, and whether libtorch is mapped.

    .venv/bin/python -m bench.api_replica [--before REF] [--after REF] [--rounds N] [--json]

Each commit is checked out into a temporary worktree and run with this venv's python (``PYTHONPATH`` = the
worktree), against one local ``redis-server`` on a free port; rounds alternate the two, so a busy machine slows
both alike. Needs ``redis-server`` on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import harness

REPO = Path(__file__).resolve().parent.parent


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = harness.free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return redis, f"redis://127.0.0.1:{port}/0"


def one_start(tree: Path, redis_url: str) -> dict[str, Any]:
    port = harness.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "CAPTIONER_JOBS__QUEUE": "redis",
        "CAPTIONER_JOBS__REDIS_URL": redis_url,
        "CAPTIONER_MODEL__PATH": "/nonexistent",  # an api replica never looks
        "CAPTIONER_LOGGING__LEVEL": "warning",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--role", "api", "--port", str(port)],
        cwd=tempfile.gettempdir(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{tree}: the replica exited with {process.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        ready_s = time.perf_counter() - started
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        return {"ready_s": ready_s, "rss_mib": rss_kib / 1024, "libtorch": "libtorch" in maps}
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="a6396f5", help="the baseline commit (default: before issue 20)")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (make system-deps)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="api-replica-") as scratch:
        trees = {}
        for label, ref in (("before", args.before), ("after", args.after)):
            tree = Path(scratch) / label
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), ref], check=True)
            trees[label] = tree
        redis, url = start_redis(Path(scratch))
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        try:
            for _ in range(args.rounds):
                for label, tree in trees.items():
                    runs[label].append(one_start(tree, url))
        finally:
            redis.terminate()
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    summary = {
        label: {
            "ref": getattr(args, label),
            "ready_s_median": statistics.median(r["ready_s"] for r in found),
            "rss_mib_median": statistics.median(r["rss_mib"] for r in found),
            "libtorch_mapped": any(r["libtorch"] for r in found),
        }
        for label, found in runs.items()
    }
    summary["load_average"] = os.getloadavg()[0]  # type: ignore[assignment]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for label in trees:
            s = summary[label]
            print(f"{label:6} {s['ref']:10} ready {s['ready_s_median']:.2f} s, RSS {s['rss_mib_median']:.0f} MiB, "
                  f"libtorch mapped: {s['libtorch_mapped']}")  # fmt: skip
        b, a = summary["before"], summary["after"]
        ready, rss = a["ready_s_median"] / b["ready_s_median"], a["rss_mib_median"] / b["rss_mib_median"]
        print(f"after/before: ready {ready:.2f}x, RSS {rss:.2f}x (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
