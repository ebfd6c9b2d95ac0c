"""The cost of one cache hit through the ASGI app, in process (no sockets, no client), against the bare Starlette
endpoint (``bench.servers.bare_app``) driven the same way: where the app's own overhead shows without the noise
of a load generator sharing the cores.

    .venv/bin/python -m bench.hit_path [--requests 3000] [--rounds 5] [--profile] [--json]

Both apps get the same 640x480 JPEG as a raw ``image/jpeg`` body; ours runs with logging configured as
``captioner serve`` configures it (JSON lines at info; the stream is /dev/null, so the line is formatted and
written but not shown). Costs are CPU time of the one thread a hit runs on, so other processes' load does not
count; rounds alternate ours and bare, and each side's best round is kept. The ratio ``bare / ours`` is what
yardstick 4 compares over loopback (there, both also pay uvicorn's HTTP parsing, which dilutes the ratio towards
1: ``bench.hit_loopback`` measures that in server CPU per request).

The breakdown times each per-request cost of a hit on its own, with the same inputs: hashing the body, the
access-log line, the metric updates, the request-id choice.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import logging
import os
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.images import photo
from bench.servers import bare_app
from captioner.config import load_settings
from captioner.http.access_log import RequestObserver, RequestRecord, choose_request_id
from captioner.http.app import create_app
from captioner.observability.logs import configure_logging
from captioner.observability.metrics import Metrics
from captioner.tools.init_model import write_untrained_model

PATH = "/api/v1/caption"


async def _call(app: Any, body: bytes, path: str = PATH) -> int:
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Future()  # no disconnect while the answer is sent: the hit path never waits here
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"image/jpeg"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)
    return status


async def _per_request_us(app: Any, body: bytes, requests: int) -> float:
    # CPU time of this thread: a hit runs entirely on the event loop's thread (bodies under 256 KB are hashed
    # inline), and CPU time does not count the slices other processes take, so a loaded machine reads right.
    started = time.thread_time()
    for _ in range(requests):
        await _call(app, body)
    return (time.thread_time() - started) / requests * 1e6


def _time_us(fn: Callable[[], Any], n: int = 2000, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, time.thread_time() - started)
    return best / n * 1e6


def breakdown(body: bytes, metrics: Metrics) -> dict[str, float]:
    """Each per-request cost of a hit, timed alone (µs)."""
    observer = RequestObserver(lambda scope, receive, send: None, metrics=metrics)  # type: ignore[arg-type,return-value]
    record = RequestRecord(request_id="0" * 32, cached=True, image_bytes=len(body), num_captions=1, variant="default")
    scope = {"path": PATH, "method": "POST", "state": {"principal": "ip:127.0.0.1"}}
    access = logging.getLogger("captioner.access")
    requests = metrics.requests
    return {
        "sha256 of the body": _time_us(lambda: hashlib.sha256(body).hexdigest()),
        "request id": _time_us(lambda: choose_request_id(None)),
        "log line + request metrics": _time_us(lambda: observer._finish(scope, record, 200, 0.0001)),
        "log line alone": _time_us(
            lambda: access.info("POST /api/v1/caption 200 0.1 ms", extra={"request_id": "0" * 32, "status": 200})
        ),
        "requests_total.labels().inc()": _time_us(lambda: requests.labels("200").inc()),
        "request_seconds.observe()": _time_us(lambda: metrics.request_seconds.observe(0.0001)),
    }


async def main(requests: int, rounds: int, profile: bool, as_json: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        model = write_untrained_model(Path(tmp) / "tiny", size="tiny", seed=0)
        settings = load_settings(None, {"CAPTIONER_MODEL__PATH": str(model), "CAPTIONER_DRIFT__ENABLED": "false"})
        configure_logging(settings.logging.format, settings.logging.level)
        sink = open(os.devnull, "w")  # noqa: SIM115 - the handler writes here until the end
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sink)
        metrics = Metrics()
        app = create_app(settings, metrics=metrics)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                           inbox.get, outbox.put))  # fmt: skip
        await outbox.get()
        while not app.state.captioner.ready:
            await asyncio.sleep(0.05)
        body = photo(1)
        assert await _call(app, body) == 200  # the miss that fills the cache
        bare = bare_app(response_bytes=230)
        assert await _call(bare, body) == 200
        hits_before = metrics.cache_hits._value.get()
        ours_rounds, bare_rounds = [], []
        for _ in range(rounds):
            ours_rounds.append(await _per_request_us(app, body, requests))
            bare_rounds.append(await _per_request_us(bare, body, requests))
        assert metrics.cache_hits._value.get() - hits_before == rounds * requests  # every call was a hit
        ours_us, bare_us = min(ours_rounds), min(bare_rounds)
        result: dict[str, Any] = {
            "load_avg": os.getloadavg(),
            "body_bytes": len(body),
            "ours_us": ours_us,
            "bare_us": bare_us,
            "ratio": bare_us / ours_us,
            "breakdown_us": breakdown(body, Metrics()),
        }
        if not as_json:
            print(f"load average {' '.join(f'{v:.2f}' for v in result['load_avg'])}; {len(body)} byte JPEG")
            print(f"ours {ours_us:.0f} µs per cache hit, bare {bare_us:.0f} µs: ratio {result['ratio']:.2f}")
            for name, us in result["breakdown_us"].items():
                print(f"  {name:<32} {us:6.1f} µs")
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(requests):
                await _call(app, body)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
        sink.close()
        if as_json:
            print(json.dumps(result))
        return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="hits per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the hit path")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds, args.profile, args.json))
