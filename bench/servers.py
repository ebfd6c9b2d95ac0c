"""The servers the benchmark compares ours against, each one process on loopback, all from one config file.

    python -m bench.servers naive    --config bench.yaml --port 8101   # generate() per request, no batching
    python -m bench.servers litserve --config bench.yaml --port 8102   # LitServe's batching, same model
    python -m bench.servers bare     --config bench.yaml --port 8103 --response-bytes 230
    python -m bench.servers ours     --config bench.yaml --port 8104 --loop asyncio --http h11

Every model server loads the same ``BlipCaptioner`` (same weights, generation settings, thread and quantisation
options) and the same ``ImagePreprocessor``, so what differs is only the serving around the model. The real
server itself is started with ``captioner serve``; ``ours`` here exists to run it with uvicorn's pure-Python
loop and parser, for the uvloop/httptools before/after.
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captioner.config import Settings, load_settings

CAPTION_PATH = "/api/v1/caption"


def in_process(settings: Settings) -> Settings:
    """The model in the caller's own process, as a hand-written endpoint and LitServe's docs hold it (LitServe's
    inference worker is a process of its own already); every other model option stays as configured."""
    return settings.replace("model", worker="thread")


def load_warm_captioner(settings: Settings) -> Any:
    """The server's own loader, in process, warmed up (``auto_threads`` applies): every peer serves this model."""
    from captioner.model.loader import load_captioner

    captioner = load_captioner(in_process(settings))
    captioner.warm_up()
    return captioner


async def image_bytes(request: Request) -> bytes:
    """The image from a JSON base64 body or a raw body: what a hand-written endpoint would accept."""
    if request.headers.get("content-type", "").startswith("application/json"):
        payload = await request.json()
        return base64.b64decode(payload["image"])
    return await request.body()


def response_body(captions: Any, settings: Settings) -> dict[str, Any]:
    return {
        "status": "success",
        "captions": [{"text": c.text, "confidence": c.confidence} for c in captions],
        "model": settings.model.name,
        "cached": False,
    }


def naive_app(settings: Settings) -> Starlette:
    """What a user writes by hand: decode and generate() per request in Starlette's thread pool, no batching."""
    from captioner.model.protocol import CaptionJob

    captioner = load_warm_captioner(settings)

    def caption_one(data: bytes) -> Any:
        prepared = captioner.preprocess(data)
        return captioner.caption_batch([CaptionJob.of(prepared)])[0]

    async def caption(request: Request) -> Response:
        captions = await run_in_threadpool(caption_one, await image_bytes(request))
        return JSONResponse(response_body(captions, settings))

    return Starlette(routes=[Route(CAPTION_PATH, caption, methods=["POST"]), _health_route()])


def bare_app(response_bytes: int) -> Starlette:
    """The floor under any HTTP endpoint: read the body, answer a JSON of the size our cache hits answer."""
    skeleton: dict[str, Any] = {
        "status": "success",
        "captions": [{"text": "", "confidence": 0.5}],
        "model": "bare",
        "cached": True,
        "image_sha256": "0" * 64,
    }
    padding = max(0, response_bytes - len(JSONResponse(skeleton).body))
    skeleton["captions"][0]["text"] = "x" * padding

    async def caption(request: Request) -> Response:
        await request.body()
        return JSONResponse(skeleton)

    return Starlette(routes=[Route(CAPTION_PATH, caption, methods=["POST"]), _health_route()])


def _health_route() -> Route:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Route("/healthz", healthz, methods=["GET"])


def run_litserve(settings: Settings, host: str, port: int) -> None:
    import litserve as ls

    from bench.peer_litserve import BlipLitAPI

    api = BlipLitAPI(
        settings,
        max_batch_size=settings.batching.max_batch_size,
        batch_timeout=settings.batching.max_wait_ms / 1000,
        api_path=CAPTION_PATH,
    )
    accelerator = "cuda" if settings.model.device.startswith("cuda") else "cpu"
    if settings.model.device == "auto":
        accelerator = "auto"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=60)
    server.run(host=host, port=port, num_api_servers=1, generate_client_file=False, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=("naive", "litserve", "bare", "ours"))
    parser.add_argument("--config", help="the captioner config file every server reads")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response-bytes", type=int, default=230, help="bare: size of the JSON answer")
    parser.add_argument("--loop", default="auto", help="ours: uvicorn event loop (auto, asyncio, uvloop)")
    parser.add_argument("--http", default="auto", help="ours: uvicorn HTTP parser (auto, h11, httptools)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    if args.kind == "litserve":
        run_litserve(settings, args.host, args.port)
        return 0
    if args.kind == "naive":
        app = naive_app(settings)
    elif args.kind == "bare":
        app = bare_app(args.response_bytes)
    else:
        from captioner.http.app import create_app

        app = create_app(settings)
    # Same uvicorn set-up as `captioner serve`: uvloop and httptools when installed, no access log.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop=args.loop if args.kind == "ours" else "auto",
        http=args.http if args.kind == "ours" else "auto",
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
