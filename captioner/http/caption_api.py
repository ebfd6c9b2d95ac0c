"""``POST /api/v1/caption``: parse, call the caption use case, render. ``?mode=async`` is ``jobs_api.py``'s.

The use case (serving/use_case.py) does the work: admission before the body is read, the cache's fast path, the
variant, or, on an ``api``-role replica, the relay through the job queue. This module parses and renders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from captioner.config import Settings
from captioner.errors import InvalidRequest
from captioner.guard.caller import api_key_of, principal_of, tenant_of
from captioner.guard.usage import answered_outcome, failed_outcome
from captioner.http.access_log import request_record
from captioner.http.assignment import assignment_key
from captioner.http.inputs import CaptionRequest, parse_api_request
from captioner.http.jobs_api import accept_job, idempotency_key, wants_async
from captioner.http.responses import FastJSONResponse
from captioner.runtime.state import runtime_of
from captioner.serving.outcome import CaptionOutcome, outcome_body
from captioner.serving.use_case import CaptionCommand

T = TypeVar("T")

# Turns a request into the image (or URL) and options; ``POST /`` (hf_api.py) brings its own.
RequestParser = Callable[[Request, Settings], Awaitable[CaptionRequest]]


async def caption(request: Request) -> Response:
    # Counted (requests_total, request_seconds, errors_total) and logged by RequestObserver, which also
    # sees the requests refused before this route runs.
    if wants_async(request):
        return await accept_job(request, runtime_of(request))
    outcome = await caption_sync(request, parse_api_request)
    return FastJSONResponse(outcome_body(outcome, runtime_of(request).settings.model.name))


async def caption_sync(request: Request, parse: RequestParser) -> CaptionOutcome:
    """A synchronous caption: admission and the tenant's daily quota (before the body is read: under overload the
    cheapest answer is the best one), parsing, then the use case; a client that leaves while its image waits
    cancels its work. How it went is counted in the tenant's usage (guard/usage.py)."""
    started = time.monotonic()
    runtime = runtime_of(request)
    use_case = runtime.use_case
    key = idempotency_key(request)  # 422 when malformed; a relayed request is deduplicated on it
    assignment = assignment_key(request)  # 422 when malformed; else the image decides the variant
    use_case.admit()
    tenant = tenant_of(request.scope)
    await runtime.usage.admit(tenant)  # 429 quota_exceeded: the tenant's daily images are spent
    tenant_name = tenant.name if tenant is not None else None
    try:
        outcome = await _caption(request, parse, started, key, assignment, tenant_name)
    except ClientDisconnect:
        raise  # nobody to answer, nothing to count
    except Exception as exc:
        runtime.usage.record(tenant_name, failed_outcome(exc))
        raise
    runtime.usage.record(tenant_name, answered_outcome(outcome.cached))
    if runtime.settings.feedback.enabled:  # a rating of this image by this caller may count (feedback/served.py)
        runtime.feedback.served.remember(principal_of(request.scope), outcome.image_sha256, outcome.variant)
    return outcome


async def _caption(
    request: Request,
    parse: RequestParser,
    started: float,
    key: str | None,
    assignment: str | None,
    tenant: str | None,
) -> CaptionOutcome:
    runtime = runtime_of(request)
    parsed = await parse(request, runtime.settings)
    if parsed.callback_url is not None:
        raise InvalidRequest("callback_url is for mode=async (a synchronous answer needs no callback)")
    record = request_record(request.scope)  # for the request's log line
    record.num_captions = parsed.num_captions
    command = CaptionCommand(
        image=parsed.image,
        url=parsed.url,
        num_captions=parsed.num_captions,
        deadline=started + runtime.settings.batching.request_timeout_s,
        api_key=api_key_of(request.scope),
        idempotency_key=key,
        assignment_key=assignment,
        tenant=tenant,
    )
    record.image_bytes = len(parsed.image) if parsed.image is not None else None
    pending = await runtime.use_case.look_up(command)
    if pending.hit is not None:
        outcome = pending.hit
    else:
        try:
            outcome = await cancel_on_disconnect(request, pending.run())
        finally:
            record.image_bytes = pending.image_bytes  # a URL's image is known once fetched
    record.note_outcome(outcome)
    return outcome


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
