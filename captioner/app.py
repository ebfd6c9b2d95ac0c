"""The Starlette application: routes, lifespan (model load, warm-up, drain) and the one error handler."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import ApiKeys
from .config import ConfigError, Settings, to_dict
from .driftwatch import DriftWatch
from .errors import CaptionerError, InternalError, Overloaded
from .guard import ApiGuard, key_principal
from .inputs import parse_caption_request
from .jobs import JobManager, build_job_store
from .jobs_api import accept_job, job_route, wants_async
from .metrics import Metrics
from .model import Captioner
from .openapi import openapi_schema
from .ratelimit import RateLimiter
from .requestlog import RequestObserver, request_id, request_record
from .responses import FastJSONResponse, error_response
from .service import CaptionOutcome, CaptionService
from .urlfetch import UrlFetcher
from .variants import VariantPool
from .web import web_routes

logger = logging.getLogger("captioner.app")
T = TypeVar("T")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    pool: VariantPool | None = None
    loop: asyncio.AbstractEventLoop | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def service(self) -> CaptionService | None:
        """A live variant's service, for what every variant does alike (admission, queue estimates)."""
        return self.pool.router.any_service() if self.pool is not None else None

    async def reload(self, new: Settings) -> None:
        """SIGHUP: apply the new `models:` list (weights, added or removed variants) without dropping requests.

        Other sections are read at start-up only (they size thread pools, queues and sockets); a change to
        them is logged, not applied.
        """
        if self.pool is None:
            logger.warning("reload ignored: the model is still loading")
            return
        running = to_dict(self.settings)
        ignored = [k for k, v in to_dict(new).items() if k != "models" and v != running[k]]
        if ignored:
            logger.warning("reload applies `models` only; restart to change: %s", ", ".join(ignored))
        await self.pool.reload(new)

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if ready else 0)

    def start_draining(self) -> None:
        """Called on SIGTERM, before anything else: stop looking ready, refuse new work, and stop holding
        queued requests back for their batch deadline (no new request will join them)."""
        self.draining = True
        self.set_ready(False)
        if self.loop is not None and self.pool is not None:
            # A signal handler may run between any two bytecodes of the loop: hand the loop the work.
            self.loop.call_soon_threadsafe(self.pool.expedite)


def create_app(
    settings: Settings,
    captioner: Captioner | None = None,
    *,
    metrics: Metrics | None = None,
    on_fatal: Callable[[], None] | None = None,
    reload_settings: Callable[[], Settings] | None = None,
) -> Starlette:
    """The app. Without ``captioner`` the BLIP model named by ``settings.model`` is loaded at start-up."""
    state = AppState(settings=settings, metrics=metrics or Metrics())
    keys = ApiKeys.from_settings(settings.auth)  # a bad entry stops start-up here, naming its position
    url_fetcher = UrlFetcher(settings.url_input, max_bytes=settings.limits.max_body_bytes)
    jobs = JobManager(build_job_store(settings, state.metrics), ttl_s=settings.jobs.ttl_s, metrics=state.metrics)
    drift = DriftWatch.from_settings(settings.drift, state.metrics)  # a bad reference file stops start-up here

    def load_model(variant_settings: Settings) -> Captioner:
        return captioner if captioner is not None else _load_blip(variant_settings)

    async def load() -> None:
        try:
            pool = VariantPool(settings, state.metrics, load_model=load_model, drift=drift)
            state.pool = pool
            await pool.start()
            if not state.draining:
                state.set_ready(True)
            service = pool.router.any_service()
            assert service is not None
            model = service.captioner
            logger.info(
                "ready: model %s on %s (%s), variants %s", model.name, model.device, model.dtype,
                ", ".join(f"{name}={weight:g}" for name, weight in pool.router.weights),
                extra={"model": model.name, "revision": model.revision, "device": model.device,
                       "dtype": model.dtype, "untrained": model.untrained, "config_source": settings.source},
            )  # fmt: skip
        except Exception as exc:
            state.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("model failed to load")
            if on_fatal is not None:
                on_fatal()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        loader = asyncio.create_task(load(), name="captioner-load")
        if reload_settings is not None:
            _on_sighup(state, reload_settings)
        try:
            yield
        finally:
            state.start_draining()
            if not loader.done():
                loader.cancel()
            if state.pool is not None:
                finished = await state.pool.close(settings.server.drain_timeout_s)
                if not finished:
                    logger.warning("drain timed out after %.0f s", settings.server.drain_timeout_s)
            await jobs.close(settings.server.drain_timeout_s)  # accepted jobs were drained above; record them
            await url_fetcher.aclose()

    async def caption(request: Request) -> Response:
        # Counted (requests_total, request_seconds, errors_total) and logged by RequestObserver, which also
        # sees the requests refused before this route runs.
        started = time.monotonic()
        if wants_async(request):
            work = await _prepare(request, started)
            batcher = state.service.batcher if state.service is not None else None
            batches_ahead = batcher.queue_depth / batcher.max_batch_size if batcher is not None else 0.0

            async def run_job() -> dict[str, Any]:
                return _success_body(await work(), settings)

            return await accept_job(request, jobs, run_job, batches_ahead=batches_ahead, auth_enabled=keys.enabled)
        work = await _prepare(request, started)
        outcome = work.hit if work.hit is not None else await _cancel_on_disconnect(request, work())
        return FastJSONResponse(_success_body(outcome, settings))

    async def _prepare(request: Request, started: float) -> _Work:
        """Admission and parsing, done while the client waits; returns the work that produces the captions."""
        service, pool = state.service, state.pool
        if state.draining:
            raise Overloaded("the server is shutting down", retry_after_s=1)
        if service is None or pool is None or not state.ready:
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
        deadline = started + settings.batching.request_timeout_s
        record = request_record(request.scope)  # for the request's log line
        record.num_captions = parsed.num_captions

        async def route(image: bytes) -> tuple[str, CaptionService]:
            digest = await service.sha256(image)
            return digest, pool.choose(sticky_key(request, digest)).service

        async def fetch_and_caption() -> CaptionOutcome:
            image = parsed.image
            if image is None:
                assert parsed.url is not None
                image = await url_fetcher.fetch(parsed.url)
            record.image_bytes = len(image)
            digest, chosen = routed if routed is not None else await route(image)
            outcome = await chosen.caption(image, parsed.num_captions, deadline=deadline, image_sha256=digest)
            record.note_outcome(outcome)
            return outcome

        routed, hit = None, None
        if parsed.image is not None:
            record.image_bytes = len(parsed.image)
            routed = await route(parsed.image)
            hit = routed[1].cached(routed[0], parsed.num_captions)
            if hit is not None:
                record.note_outcome(hit)
        return _Work(fetch_and_caption, hit)

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

    async def handle_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; uvicorn drops it

    async def handle_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this response is sent; the client gets no internals.
        response = error_response(InternalError())
        response.headers["X-Request-ID"] = request_id(request.scope)  # sent outside RequestObserver
        return response

    app = Starlette(
        routes=[
            Route("/api/v1/caption", caption, methods=["POST"]),
            job_route(jobs, auth_enabled=keys.enabled),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            *web_routes(settings),
            *drift.routes(),
        ],
        exception_handlers={
            CaptionerError: handle_error,
            HTTPException: handle_http_error,
            ClientDisconnect: handle_client_gone,
            Exception: handle_unexpected,
        },
        middleware=[
            Middleware(RequestObserver, metrics=state.metrics),  # outermost: sees every answer, 401/429 too
            Middleware(ApiGuard, keys=keys, limiter=RateLimiter.from_settings(settings.rate_limit)),
        ],
        lifespan=lifespan,
    )
    app.state.captioner = state
    return app


class _Work:
    """What a caption request needs done: the coroutine function, or, on a cache hit, the answer already."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, CaptionOutcome]], hit: CaptionOutcome | None) -> None:
        self.run = run
        self.hit = hit

    def __call__(self) -> Coroutine[Any, Any, CaptionOutcome]:
        return self.run()


# nginx's code for "the client went away before the answer": counted, never sent.
CLIENT_CLOSED_REQUEST = 499


async def _cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, cancelling it if the client disconnects first.

    A cancelled request leaves the batcher's queue (its future is cancelled), so no generate work is spent on
    it. Call this only once the body has been read: from then on the server's ``receive`` has nothing left to
    give but ``http.disconnect``, which it delivers when the connection drops.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnect() from None  # the client left; we were not cancelled ourselves
        raise
    finally:
        watcher.cancel()


def _on_sighup(state: AppState, reload_settings: Callable[[], Settings]) -> None:
    async def reload() -> None:
        try:
            new = await asyncio.to_thread(reload_settings)
            await state.reload(new)
        except ConfigError as exc:
            logger.error("reload refused, the running config stays: %s", exc)
        except Exception:
            logger.exception("reload failed; the running variants stay")

    def on_signal() -> None:
        task = asyncio.create_task(reload(), name="captioner-reload")
        state._tasks.add(task)
        task.add_done_callback(state._tasks.discard)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_signal)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no SIGHUP here
        logger.warning("SIGHUP reload unavailable in this process")


def sticky_key(request: Request, image_sha256: str) -> str:
    """A/B assignment sticks to the API key when there is one, else to the image."""
    return key_principal(request.scope) or "image:" + image_sha256


def _success_body(outcome: CaptionOutcome, settings: Settings) -> dict[str, Any]:
    return {
        "status": "success",
        "captions": [{"text": c.text, "confidence": c.confidence} for c in outcome.captions],
        "model": outcome.model or settings.model.name,
        "variant": outcome.variant,
        "cached": outcome.cached,
        "image_sha256": outcome.image_sha256,
    }


def _load_blip(settings: Settings) -> Captioner:
    from .model import BlipCaptioner
    from .weights import ensure_weights

    path = ensure_weights(settings.model)
    if settings.model.worker == "process":
        from .model_process import ProcessCaptioner

        return ProcessCaptioner(path, settings.model, settings.generation, settings.limits.max_pixels)
    return BlipCaptioner(path, settings.model, settings.generation, settings.limits.max_pixels)
