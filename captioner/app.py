"""The Starlette application: routes, lifespan (model load, warm-up, drain) and the one error handler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .config import Settings
from .errors import CaptionerError, InternalError, InvalidRequest, Overloaded
from .inputs import parse_caption_request
from .metrics import Metrics
from .model import Captioner
from .openapi import openapi_schema
from .service import CaptionOutcome, CaptionService

logger = logging.getLogger("captioner.app")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class FastJSONResponse(JSONResponse):
    """JSON via orjson: several times faster than the json module for our small bodies."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    service: CaptionService | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if ready else 0)

    def start_draining(self) -> None:
        """Called on SIGTERM, before anything else: stop looking ready, refuse new work."""
        self.draining = True
        self.set_ready(False)


def error_response(error: CaptionerError) -> Response:
    return FastJSONResponse(error.to_dict(), status_code=error.status_code, headers=error.headers)


def create_app(
    settings: Settings,
    captioner: Captioner | None = None,
    *,
    metrics: Metrics | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> Starlette:
    """The app. Without ``captioner`` the BLIP model named by ``settings.model`` is loaded at start-up."""
    state = AppState(settings=settings, metrics=metrics or Metrics())

    async def load() -> None:
        try:
            model = captioner if captioner is not None else await asyncio.to_thread(_load_blip, settings)
            state.metrics.model_info.info(
                {"name": model.name, "revision": model.revision, "device": model.device, "dtype": model.dtype}
            )
            if model.untrained:
                logger.warning(
                    "serving an UNTRAINED model (random weights from captioner init-model): "
                    "its captions are meaningless"
                )
            service = CaptionService(settings, model, state.metrics)
            service.start()
            await service.warm_up()
            state.service = service
            if not state.draining:
                state.set_ready(True)
            logger.info("ready: model %s on %s (%s)", model.name, model.device, model.dtype)
        except Exception as exc:
            state.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("model failed to load")
            if on_fatal is not None:
                on_fatal()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = asyncio.create_task(load(), name="captioner-load")
        try:
            yield
        finally:
            state.start_draining()
            if not loader.done():
                loader.cancel()
            if state.service is not None:
                finished = await state.service.close(settings.server.drain_timeout_s)
                if not finished:
                    logger.warning("drain timed out after %.0f s", settings.server.drain_timeout_s)

    async def caption(request: Request) -> Response:
        started = time.monotonic()
        status = 500
        try:
            outcome = await _caption(request, started)
            status = 200
            return FastJSONResponse(_success_body(outcome, settings))
        except CaptionerError as error:
            status = error.status_code
            state.metrics.errors.labels(error.code).inc()
            raise
        finally:
            state.metrics.requests.labels(str(status)).inc()
            state.metrics.request_seconds.observe(time.monotonic() - started)

    async def _caption(request: Request, started: float) -> CaptionOutcome:
        service = state.service
        if state.draining:
            raise Overloaded("the server is shutting down", retry_after_s=1)
        if service is None or not state.ready:
            raise Overloaded("the model is still loading", retry_after_s=5)
        batcher = service.batcher
        if batcher.queue_depth >= batcher.max_queue:
            # Refuse before reading the body: under overload the cheapest answer is the best one.
            raise Overloaded(retry_after_s=batcher.retry_after_s())
        parsed = await parse_caption_request(
            request,
            max_body_bytes=settings.limits.max_body_bytes,
            default_num_captions=settings.generation.num_captions,
            max_num_captions=settings.generation.max_num_captions,
        )
        if parsed.image is None:
            raise InvalidRequest("URL input is not enabled on this server")
        deadline = started + settings.batching.request_timeout_s
        return await service.caption(parsed.image, parsed.num_captions, deadline=deadline)

    async def healthz(request: Request) -> Response:
        return FastJSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.ready and not state.draining:
            return FastJSONResponse({"status": "ready"})
        reason = "draining" if state.draining else ("failed: " + state.load_error if state.load_error else "loading")
        return FastJSONResponse({"status": reason}, status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return FastJSONResponse(openapi_schema(settings))

    async def handle_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CaptionerError)
        return error_response(exc)

    async def handle_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = {"status": "error", "error": {"code": code, "message": str(exc.detail)}}
        return FastJSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def handle_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this response is sent; the client gets no internals.
        return error_response(InternalError())

    app = Starlette(
        routes=[
            Route("/api/v1/caption", caption, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={
            CaptionerError: handle_error,
            HTTPException: handle_http_error,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.captioner = state
    return app


def _success_body(outcome: CaptionOutcome, settings: Settings) -> dict[str, Any]:
    return {
        "status": "success",
        "captions": [{"text": c.text, "confidence": c.confidence} for c in outcome.captions],
        "model": settings.model.name,
        "cached": outcome.cached,
        "image_sha256": outcome.image_sha256,
    }


def _load_blip(settings: Settings) -> Captioner:
    from .model import BlipCaptioner
    from .weights import ensure_weights

    path = ensure_weights(settings.model)
    return BlipCaptioner(path, settings.model, settings.generation, settings.limits.max_pixels)
