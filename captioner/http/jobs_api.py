"""The HTTP side of async jobs: ``?mode=async`` on ``POST /api/v1/caption`` and ``GET /api/v1/caption/{job_id}``.

The POST is checked exactly like a synchronous one (admission, body limits, parsing) before the job is
accepted, so a malformed request still gets its 4xx at once. What can only fail later (a bad image, a URL
that can't be fetched, a timeout) is reported in the job's result, in the same error shape as a sync call.
A finished job is answered with 200 whatever its outcome: the GET itself succeeded; ``status`` says how the job
went ("success" with the sync body, or "error" with the error body).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from captioner.errors import InvalidRequest
from captioner.guard.gate import key_principal
from captioner.http import paths
from captioner.http.responses import FastJSONResponse
from captioner.http.state import AppState, app_state

MODES = ("sync", "async")


def wants_async(request: Request) -> bool:
    """True for ``?mode=async``; 422 for a mode that isn't sync or async."""
    mode = request.query_params.get("mode", "sync")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be sync or async, got {mode!r}")
    return mode == "async"


def owner(request: Request, state: AppState) -> str | None:
    """The API key's principal when auth is on (set by the gate): the owner of the jobs it creates."""
    return key_principal(request.scope) if state.keys.enabled else None


async def accept_job(
    request: Request, state: AppState, work: Callable[[], Awaitable[dict[str, Any]]], *, batches_ahead: float
) -> Response:
    """Start ``work`` (which returns the sync 200 body) as a job; 202 with its id and a time estimate."""
    job = await state.jobs.submit(work, owner=owner(request, state))
    body = {
        "status": "processing",
        "job_id": job.job_id,
        "estimated_time_seconds": state.jobs.estimate_s(batches_ahead),
    }
    return FastJSONResponse(body, status_code=202, headers={"Location": paths.JOB.format(job_id=job.job_id)})


async def job_status(request: Request) -> Response:
    state = app_state(request)
    job = await state.jobs.get(request.path_params["job_id"], principal=owner(request, state))
    # Retry-After tells pollers when to come back; no-store because the answer changes until the job ends.
    headers = {"Retry-After": "1"} if job.status == "processing" else {}
    return FastJSONResponse(job.body(), headers={**headers, "Cache-Control": "no-store"})
