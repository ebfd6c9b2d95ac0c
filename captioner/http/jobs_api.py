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

from starlette.requests import Request
from starlette.responses import Response

from captioner.errors import CaptionerError, InvalidRequest, Overloaded
from captioner.guard.caller import api_key_of, principal_of, tenant_of
from captioner.guard.usage import outcome_of
from captioner.http import paths
from captioner.http.assignment import assignment_key
from captioner.http.inputs import CaptionRequest, parse_api_request
from captioner.http.responses import FastJSONResponse
from captioner.jobs.queue import JobRequest
from captioner.runtime.state import Runtime, runtime_of

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


def job_request(
    request: Request, runtime: Runtime, parsed: CaptionRequest, assignment: str | None = None
) -> JobRequest:
    if parsed.callback_url is not None:
        if runtime.callbacks is None:
            raise InvalidRequest("callback_url needs jobs.callback_secret set on the server (callbacks are signed)")
        runtime.callbacks.check(parsed.callback_url)  # 400 url_not_allowed for what could never be called
    tenant = tenant_of(request.scope)
    return JobRequest.new(
        api_key_of(request.scope), parsed.num_captions, image=parsed.image, url=parsed.url,
        callback_url=parsed.callback_url, assignment_key=assignment, tenant=tenant.name if tenant else None,
    )  # fmt: skip


async def accept_job(request: Request, runtime: Runtime) -> Response:
    """Queue the request as a job; 202 with its id and a time estimate.

    The caller's outstanding jobs are counted first (429 at ``jobs.max_running_per_principal``, or its tenant's
    ``max_running_jobs``, before the body is read), then the image against its tenant's daily quota (429
    ``quota_exceeded``: guard/usage.py), and the images waiting in the queue are bounded (503):
    ``guard/job_quota.py``.
    """
    key = idempotency_key(request)
    assignment = assignment_key(request)  # 422 before anything is read, like a malformed Idempotency-Key

    async def is_open(job_id: str) -> bool:
        job = await runtime.jobs.queue.get(job_id)
        return job is not None and job.status == "processing"

    tenant = tenant_of(request.scope)
    limit = tenant.max_running_jobs if tenant is not None else None
    place = await runtime.job_quota.reserve(principal_of(request.scope), is_open, limit)
    counted = False  # against the tenant's daily quota: its outcome is then counted too, here or by the worker
    try:
        if runtime.draining:
            raise Overloaded("the server is shutting down", retry_after_s=1)
        await runtime.usage.admit(tenant)
        counted = True
        parsed = await parse_api_request(request, runtime.settings)
        await runtime.job_quota.check_bytes(len(parsed.image or b""), is_open)
        submitted = await runtime.jobs.submit(job_request(request, runtime, parsed, assignment), idempotency_key=key)
    except BaseException as exc:
        place.cancel()
        if counted and isinstance(exc, CaptionerError):
            runtime.usage.record(tenant.name if tenant else None, outcome_of(exc.status_code))
        raise
    job = submitted.job
    if submitted.replayed:
        place.cancel()  # the first request's job, counted when it was accepted (its quota and usage too)
        runtime.usage.give_back(tenant.name if tenant else None)
    else:
        place.bind(job.job_id, len(parsed.image or b""))
    body = {"status": "processing", "job_id": job.job_id, "estimated_time_seconds": runtime.jobs.estimate_s()}
    headers = {"Location": paths.JOB.format(job_id=job.job_id)}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return FastJSONResponse(body, status_code=202, headers=headers)


async def job_status(request: Request) -> Response:
    job = await runtime_of(request).jobs.get(request.path_params["job_id"], principal=api_key_of(request.scope))
    # Retry-After tells pollers when to come back; no-store because the answer changes until the job ends.
    headers = {"Retry-After": "1"} if job.status == "processing" else {}
    return FastJSONResponse(job.body(), headers={**headers, "Cache-Control": "no-store"})
