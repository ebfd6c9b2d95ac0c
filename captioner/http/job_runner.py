"""What a worker does with a job: exactly what a synchronous request does after parsing (fetch the URL if any,
hash, route to a variant, cache, preprocess, batcher), so a job's result equals the synchronous answer. A running
job holds a ticket of the admission budget, like a synchronous request in flight."""

from __future__ import annotations

from typing import Any

from captioner.errors import Overloaded
from captioner.http.caption_api import success_body
from captioner.jobs.queue import JobRequest
from captioner.jobs.worker import JobRunner
from captioner.runtime.state import AppState


def job_runner(state: AppState) -> JobRunner:
    async def run(request: JobRequest, deadline: float) -> dict[str, Any]:
        # A running job holds an admission ticket like a request in flight (it waits for one: it is accepted
        # already), and stops counting against its caller's outstanding jobs when it ends.
        try:
            async with await state.admission.acquire_waiting():
                return await run_one(request, deadline)
        finally:
            state.job_quota.ended(request.job_id)

    async def run_one(request: JobRequest, deadline: float) -> dict[str, Any]:
        service, pool = state.service, state.pool
        if service is None or pool is None:
            raise Overloaded("the model is not loaded", retry_after_s=5)
        image = request.image
        if image is None:
            assert request.url is not None
            image = await state.url_fetcher.fetch(request.url)
        digest = await service.sha256(image)
        # The sync path's sticky key: the API key when there is one, else the image.
        chosen = pool.choose(request.owner or "image:" + digest).service
        outcome = await chosen.caption(image, request.num_captions, deadline=deadline, image_sha256=digest)
        return success_body(outcome, state.settings)

    return run
