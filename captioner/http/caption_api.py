"""``POST /api/v1/caption``: admission, parsing, the cache fast path, then the service (sync or as a job).

On an ``api``-role replica (no model) a synchronous request is relayed through the job queue (``relay``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from captioner.config import Settings
from captioner.errors import InvalidRequest, Overloaded, error_from_body
from captioner.guard.api_guard import key_principal
from captioner.http.access_log import request_record
from captioner.http.inputs import CaptionRequest, parse_caption_request
from captioner.http.jobs_api import accept_job, idempotency_key, job_request, wants_async
from captioner.http.responses import FastJSONResponse
from captioner.runtime.state import AppState, app_state
from captioner.serving.service import CaptionOutcome, CaptionService

T = TypeVar("T")


async def caption(request: Request) -> Response:
    # Counted (requests_total, request_seconds, errors_total) and logged by RequestObserver, which also
    # sees the requests refused before this route runs.
    started = time.monotonic()
    state = app_state(request)
    if wants_async(request):
        return await accept_job(request, state)
    idempotency_key(request)  # checked, though only jobs use it
    if state.role == "api":
        return FastJSONResponse(await relayed(request, state, started))
    work = await prepare(request, state, started)
    outcome = work.hit if work.hit is not None else await cancel_on_disconnect(request, work())
    return FastJSONResponse(success_body(outcome, state.settings))


class Work:
    """What a caption request needs done: the coroutine function, or, on a cache hit, the answer already."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, CaptionOutcome]], hit: CaptionOutcome | None) -> None:
        self.run = run
        self.hit = hit

    def __call__(self) -> Coroutine[Any, Any, CaptionOutcome]:
        return self.run()


# Turns a request into the image (or URL) and options; ``POST /`` (hf_api.py) brings its own.
RequestParser = Callable[[Request, Settings], Awaitable[CaptionRequest]]


async def parse_api_request(request: Request, settings: Settings) -> CaptionRequest:
    return await parse_caption_request(
        request,
        max_body_bytes=settings.limits.max_body_bytes,
        default_num_captions=settings.generation.num_captions,
        max_num_captions=settings.generation.max_num_captions,
    )


async def prepare(request: Request, state: AppState, started: float, parse: RequestParser = parse_api_request) -> Work:
    """Admission and parsing, done while the client waits; returns the work that produces the captions."""
    settings = state.settings
    service, pool = state.service, state.pool
    if state.draining:
        raise Overloaded("the server is shutting down", retry_after_s=1)
    if service is None or pool is None or not state.ready:
        raise Overloaded("the model is still loading", retry_after_s=5)
    batcher = service.batcher
    if batcher.queue_depth >= batcher.max_queue:
        # Refuse before reading the body: under overload the cheapest answer is the best one.
        raise Overloaded(retry_after_s=batcher.retry_after_s())
    parsed = await parse(request, settings)
    if parsed.callback_url is not None:
        raise InvalidRequest("callback_url is for mode=async (a synchronous answer needs no callback)")
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
            image = await state.url_fetcher.fetch(parsed.url)
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
    return Work(fetch_and_caption, hit)


async def relayed(
    request: Request, state: AppState, started: float, parse: RequestParser = parse_api_request
) -> dict[str, Any]:
    """An ``api``-role replica has no model: a synchronous request goes through the queue like a job, and its
    answer is the job's result (the same body and errors as a replica with a model; 504 past the deadline)."""
    if state.draining:
        raise Overloaded("the server is shutting down", retry_after_s=1)
    parsed = await parse(request, state.settings)
    if parsed.callback_url is not None:
        raise InvalidRequest("callback_url is for mode=async (a synchronous answer needs no callback)")
    job = (await state.jobs.submit(job_request(request, state, parsed))).job
    deadline = started + state.settings.batching.request_timeout_s
    ended = await cancel_on_disconnect(request, state.jobs.wait(job.job_id, principal=job.owner, deadline=deadline))
    result = ended.result or {}
    if ended.status != "success":
        raise error_from_body(result)
    return result


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
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


def sticky_key(request: Request, image_sha256: str) -> str:
    """A/B assignment sticks to the API key when there is one, else to the image."""
    return key_principal(request.scope) or "image:" + image_sha256


def success_body(outcome: CaptionOutcome, settings: Settings) -> dict[str, Any]:
    return {
        "status": "success",
        "captions": [{"text": c.text, "confidence": c.confidence} for c in outcome.captions],
        "model": outcome.model or settings.model.name,
        "variant": outcome.variant,
        "cached": outcome.cached,
        "image_sha256": outcome.image_sha256,
    }
