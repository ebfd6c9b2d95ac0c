"""Cache hits over loopback, counted in the server's CPU time per request: our server against the bare Starlette
endpoint (yardstick 4), readable on a busy machine.

    .venv/bin/python -m bench.hit_loopback [--requests 10000] [--clients 4] [--log-level warning]

Both servers run as ``bench/run_all`` runs them (uvicorn with uvloop and httptools; ours is ``captioner serve``
with the tiny model and logging at ``--log-level``) and get the same 640x480 JPEG as a raw body on keep-alive
connections. The figure is the server process's CPU time (user + system, from /proc) over the requests, divided
by their number: an event-loop server answers at most 1 / (that) requests per second on its core, and other
processes' load does not enter it, unlike requests per second, which on a shared 2-core machine mostly measures
the neighbours. The ratio ``bare / ours`` is the saturated-throughput ratio when the client has a core of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench import harness
from bench.images import photo
from bench.loadgen import Connection

PATH = "/api/v1/caption"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(url: str, body: bytes, requests: int, clients: int) -> int:
    host, port = urlparse(url).hostname or "127.0.0.1", urlparse(url).port or 80
    remaining = requests
    ok = 0

    async def client() -> None:
        nonlocal remaining, ok
        connection = Connection(host, port)
        while remaining > 0:
            remaining -= 1
            status, _ = await connection.request("POST", PATH, body, "image/jpeg")
            ok += status == 200
        connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return ok


def measure(kind: str, config: Path, tmp: Path, body: bytes, requests: int, clients: int) -> dict[str, Any]:
    with harness.serve(kind, config, tmp, args=("--response-bytes", "230") if kind == "bare" else ()) as server:
        asyncio.run(drive(server.url, body, 200, clients))  # the miss that fills the cache, then warm-up
        before, started = cpu_seconds(server.process.pid), time.perf_counter()
        ok = asyncio.run(drive(server.url, body, requests, clients))
        cpu, wall = cpu_seconds(server.process.pid) - before, time.perf_counter() - started
    if ok != requests:
        raise RuntimeError(f"{kind}: {requests - ok} of {requests} requests were not answered 200")
    return {"cpu_us_per_request": cpu / requests * 1e6, "requests_per_s": requests / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--log-level", default="warning", help="ours: logging.level (bench/run_all uses warning)")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "captioner-bench")
    args = parser.parse_args(argv)
    model_dir = harness.ensure_model(args.models, "tiny")
    body = photo(1)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        config = harness.write_config(tmp, "hits", model_dir, logging={"level": args.log_level})
        bare = measure("bare", config, tmp, body, args.requests, args.clients)
        ours = measure("ours", config, tmp, body, args.requests, args.clients)
    result = {"load_avg": os.getloadavg(), "log_level": args.log_level, "ours": ours, "bare": bare,
              "ratio": bare["cpu_us_per_request"] / ours["cpu_us_per_request"]}  # fmt: skip
    load = " ".join(f"{v:.2f}" for v in result["load_avg"])
    print(f"server CPU per cache hit: ours {ours['cpu_us_per_request']:.0f} µs, bare "
          f"{bare['cpu_us_per_request']:.0f} µs: ratio {result['ratio']:.2f} (load average {load})")  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
