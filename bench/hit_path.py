"""The cost of one cache hit through the ASGI app, in process (no sockets, no client): where the app's own
overhead shows without the noise of a load generator sharing the cores.

    .venv/bin/python -m bench.hit_path [--requests 3000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from captioner.config import load_settings
from captioner.http.app import create_app
from captioner.model.preprocessing import photo
from captioner.tools.init_model import write_untrained_model


async def _call(app: Any, body: bytes) -> int:
    done = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/v1/caption", "raw_path": b"/api/v1/caption", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"image/jpeg"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)
    return status


async def main(requests: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = write_untrained_model(Path(tmp) / "tiny", size="tiny", seed=0)
        settings = load_settings(None, {"CAPTIONER_MODEL__PATH": str(model), "CAPTIONER_DRIFT__ENABLED": "false"})
        app = create_app(settings)
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
        started = time.perf_counter()
        for _ in range(requests):
            await _call(app, body)
        print(f"{(time.perf_counter() - started) / requests * 1e6:.0f} µs per cache hit ({len(body)} byte JPEG)")
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(requests):
                await _call(app, body)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the hit path")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.profile))
