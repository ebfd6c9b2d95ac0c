"""The caption use case's relay on an ``api``-role replica, which has no model: a synchronous request becomes a
job on the shared queue, and its answer is the job's result (the same body and errors as a replica with a
model; 504 at the request's deadline). A repeated ``Idempotency-Key`` waits on the first request's job.

The job carries the caller's deadline, as wall-clock time (replicas share no monotonic clock; their wall clocks
are NTP-synced): a worker that claims it after the deadline answers it 504 without running it."""

from __future__ import annotations

import time

from captioner.errors import error_from_body
from captioner.jobs.manager import JobManager
from captioner.jobs.queue import JobRequest
from captioner.serving.outcome import CaptionOutcome, outcome_from_body
from captioner.serving.use_case import CaptionCommand


class JobRelay:
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs

    async def caption(self, command: CaptionCommand) -> CaptionOutcome:
        deadline = time.time() + (command.deadline - time.monotonic())
        request = JobRequest.new(
            command.api_key, command.num_captions, image=command.image, url=command.url,
            assignment_key=command.assignment_key, deadline=deadline, tenant=command.tenant,
        )  # fmt: skip
        job = (await self.jobs.submit(request, idempotency_key=command.idempotency_key)).job
        ended = await self.jobs.wait(job.job_id, principal=job.owner, deadline=command.deadline)
        result = ended.result or {}
        if ended.status != "success":
            raise error_from_body(result)
        return outcome_from_body(result)
