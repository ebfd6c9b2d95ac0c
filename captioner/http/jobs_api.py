"""The HTTP side of async jobs: ``?mode=async`` on ``POST /api/v1/caption`` and ``GET /api/v1/caption/{job_id}``.

The POST is checked like a synchronous one (admission, body limits, parsing, the callback URL's form) before
the job is accepted, so a malformed request still gets its 4xx at once. What can only fail later (a bad image, a
URL that can't be fetched, a timeout) is reported in the job's result, in the same error shape as a sync call.
A finished job is answered with 200 whatever its outcome: the GET itself succeeded; ``status`` says how the job
went ("success" with the sync body, or "error" with the error body).

``Idempotency-Key`` (Stripe's convention): the same key from the same owner within ``jobs.ttl_s`` answers the
first request's job (202, ``Idempotent-Replayed: true``) instead of making another; the same key with a
different request is a 422. Another API key's identical Idempotency-Key is a different job.
"""

from __future__ import annotations

import re
import secrets

from starlette.requests import Request
from starlette.responses import Response

from captioner.errors import InvalidRequest, Overloaded, UrlNotAllowed
from captioner.guard.api_guard import key_principal
from captioner.guard.forwarded import client_bucket
from captioner.http import paths
from captioner.http.inputs import CaptionRequest, parse_caption_request
from captioner.http.responses import FastJSONResponse
from captioner.jobs.queue import JobRequest
from captioner.runtime.state import AppState, app_state

MODES = ("sync", "async")
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Printable ASCII, as Stripe's keys are (up to 255 characters). Not starting or ending with a space: HTTP strips
# those from header values, so a key sent as " " arrives empty. The OpenAPI document serves this very pattern.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.removeprefix("^").removesuffix("$"))


def wants_async(request: Request) -> bool:
    """True for ``?mode=async``; 422 for a mode that isn't sync or async."""
    if not request.scope.get("query_string"):  # the common case: no query to parse
        return False
    modes = request.query_params.getlist("mode")
    if len(modes) > 1:
        raise InvalidRequest("the query parameter 'mode' is given more than once")
    mode = modes[0] if modes else "sync"
    if mode not in MODES:
        raise InvalidRequest(f"mode must be sync or async, got {mode!r}")
    return mode == "async"


def owner(request: Request, state: AppState) -> str | None:
    """The API key's principal when auth is on (set by the gate): the owner of the jobs it creates."""
    return key_principal(request.scope) if state.keys.enabled else None


def principal_of(request: Request) -> str:
    """The caller as the gate named it: ``key:<id>``, or ``ip:<address>`` (IPv6 by /64) without auth."""
    principal = request.scope.get("state", {}).get("principal")
    return principal if isinstance(principal, str) else client_bucket(request.scope)


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, checked wherever it is sent (422 when malformed)."""
    values = request.headers.getlist(IDEMPOTENCY_HEADER)
    if not values:
        return None
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise InvalidRequest(
            f"{IDEMPOTENCY_HEADER} must be one value of 1 to 255 printable ASCII characters, no space at either end"
        )
    return values[0]


async def parse_job(request: Request, state: AppState) -> CaptionRequest:
    """Admission and parsing, as for a synchronous request, minus what needs the model."""
    if state.draining:
        raise Overloaded("the server is shutting down", retry_after_s=1)
    settings = state.settings
    parsed = await parse_caption_request(
        request,
        max_body_bytes=settings.limits.max_body_bytes,
        default_num_captions=settings.generation.num_captions,
        max_num_captions=settings.generation.max_num_captions,
    )
    if parsed.url is not None and not settings.url_input.enabled:
        # Refused now, as a synchronous request is, rather than accepted (202) as a job bound to fail.
        raise UrlNotAllowed("fetching images by URL is disabled on this server")
    return parsed


def job_request(request: Request, state: AppState, parsed: CaptionRequest) -> JobRequest:
    if parsed.callback_url is not None:
        if state.callbacks is None:
            raise InvalidRequest("callback_url needs jobs.callback_secret set on the server (callbacks are signed)")
        state.callbacks.check(parsed.callback_url)  # 400 url_not_allowed for what could never be called
    return JobRequest(
        secrets.token_hex(16), owner(request, state), parsed.num_captions, image=parsed.image, url=parsed.url,
        callback_url=parsed.callback_url,
    )  # fmt: skip


async def accept_job(request: Request, state: AppState) -> Response:
    """Queue the request as a job; 202 with its id and a time estimate.

    The caller's outstanding jobs are counted first (429 at ``jobs.max_running_per_principal``, before the body
    is read), and the images waiting in the queue are bounded (503): ``guard/job_quota.py``.
    """
    key = idempotency_key(request)

    async def is_open(job_id: str) -> bool:
        job = await state.jobs.queue.get(job_id)
        return job is not None and job.status == "processing"

    place = await state.job_quota.reserve(principal_of(request), is_open)
    try:
        parsed = await parse_job(request, state)
        await state.job_quota.check_bytes(len(parsed.image or b""), is_open)
        submitted = await state.jobs.submit(job_request(request, state, parsed), idempotency_key=key)
    except BaseException:
        place.cancel()
        raise
    job = submitted.job
    if submitted.replayed:
        place.cancel()  # the first request's job, counted when it was accepted
    else:
        place.bind(job.job_id, len(parsed.image or b""))
    body = {"status": "processing", "job_id": job.job_id, "estimated_time_seconds": state.jobs.estimate_s()}
    headers = {"Location": paths.JOB.format(job_id=job.job_id)}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return FastJSONResponse(body, status_code=202, headers=headers)


async def job_status(request: Request) -> Response:
    state = app_state(request)
    job = await state.jobs.get(request.path_params["job_id"], principal=owner(request, state))
    # Retry-After tells pollers when to come back; no-store because the answer changes until the job ends.
    headers = {"Retry-After": "1"} if job.status == "processing" else {}
    return FastJSONResponse(job.body(), headers={**headers, "Cache-Control": "no-store"})
