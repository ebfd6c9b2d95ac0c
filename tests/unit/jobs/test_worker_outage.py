"""A worker's own outage is not the job's fault (issue 21, item 1), with fake queues and runners:

- no claims while this replica's model can't take work (``available()`` refuses), claims again once it can;
- a job this worker could not run (model down, lost with its model process, local overload, a local timeout) is
  released: handed back unrun without using an attempt, even at the last attempt; a job whose batches died with
  their model process ``max(2, max_attempts)`` times is a dead letter;
- a relayed job carries its caller's wall-clock deadline; past it the job is answered 504 once, never run,
  never retried; the relay sets that deadline from the request's own.
The Redis side of a release (a new entry, attempts carried over) is tests/system/test_worker_release.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import generate_latest

from captioner.errors import ModelError, ModelLost, ModelUnavailable, Overloaded, RequestTimeout
from captioner.jobs.durable_queue import decode_request, encode_request
from captioner.jobs.queue import Claim, JobRequest, MemoryJobQueue, QueueStats, Submitted
from captioner.jobs.records import Job, JobStatus, MemoryJobStore
from captioner.jobs.relay import JobRelay
from captioner.jobs.worker import JobWorker, lost_limit
from captioner.observability.metrics import Metrics
from captioner.serving.use_case import CaptionCommand
from tests.support.metrics import metric_value

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0  # the fake wall clock
SUCCESS = {"status": "success", "captions": [], "cached": False, "image_sha256": "0" * 64}


def request(job_id: str = "a" * 32, **kwargs: Any) -> JobRequest:
    return JobRequest(job_id, "key:alpha", 1, image=b"image", **kwargs)


class ScriptedQueue:
    """A redelivering queue that hands out the given claims once each and records what the worker did."""

    redelivers = True

    def __init__(self, claims: Sequence[Claim], *, max_attempts: int = 3) -> None:
        self.max_attempts = max_attempts
        self._claims = list(claims)
        self.claim_calls = 0
        self.finished: list[tuple[str, JobStatus, dict[str, Any]]] = []
        self.settled: list[str] = []
        self.abandoned: list[str] = []
        self.released: list[tuple[str, bool]] = []

    async def start(self) -> None:
        pass

    async def submit(self, request: JobRequest, *, idempotency_key: str | None) -> Submitted:
        raise AssertionError("not used")

    async def get(self, job_id: str) -> Job | None:
        return None

    async def claim(self, count: int, *, wait_s: float) -> list[Claim]:
        self.claim_calls += 1
        taken, self._claims = self._claims[:count], self._claims[count:]
        if not taken:
            await asyncio.sleep(0.01)
        return taken

    async def renew(self, claims: Sequence[Claim]) -> None:
        pass

    async def finish(self, claim: Claim, status: JobStatus, result: dict[str, Any]) -> bool:
        self.finished.append((claim.request.job_id, status, result))
        return True

    async def settle(self, claim: Claim) -> None:
        self.settled.append(claim.request.job_id)

    async def abandon(self, claim: Claim) -> None:
        self.abandoned.append(claim.request.job_id)

    async def release(self, claim: Claim, *, lost: bool) -> None:
        self.released.append((claim.request.job_id, lost))

    async def stats(self) -> QueueStats:
        return QueueStats(0, 0, 0.0)

    async def aclose(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return not self._claims and bool(self.finished or self.abandoned or self.released)


class Runner:
    """A RunJob that raises the scripted errors in turn (then succeeds), recording each call's deadline."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, job: JobRequest, deadline: float) -> dict[str, Any]:
        self.calls.append((job.job_id, deadline))
        if self.errors:
            raise self.errors.pop(0)
        return SUCCESS


async def run_until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def series(metrics: Metrics, name: str, labels: str = "") -> float:
    return metric_value(generate_latest(metrics.registry).decode(), name, labels)


async def run_one(claim: Claim, runner: Runner, *, max_attempts: int = 3, **worker: Any) -> ScriptedQueue:
    queue = ScriptedQueue([claim], max_attempts=max_attempts)
    metrics = worker.pop("metrics", Metrics())
    job_worker = JobWorker(queue, runner, metrics=metrics, capacity=1, request_timeout_s=30, lease_s=30,
                           clock=lambda: NOW, **worker)  # fmt: skip
    job_worker.start()
    await run_until(lambda: queue.done)
    await job_worker.close(1)
    return queue


# ---------------------------------------------------------------------------------------------- claiming


async def test_no_claims_while_the_model_cannot_take_work_and_claims_once_it_can() -> None:
    store = MemoryJobStore(max_jobs=10, clock=lambda: NOW)
    queue = MemoryJobQueue(store, ttl_s=60, max_keys=10, clock=lambda: NOW)
    refusal: list[Overloaded | None] = [ModelUnavailable("the model is restarting", retry_after_s=5)]
    runner = Runner()
    metrics = Metrics()
    worker = JobWorker(queue, runner, metrics=metrics, capacity=2, request_timeout_s=30, lease_s=30,
                       available=lambda: refusal[0], clock=lambda: NOW)  # fmt: skip
    worker.start()
    await queue.submit(request("1" * 32), idempotency_key=None)
    await asyncio.sleep(0.5)  # the worker looked a few times (every 0.2 s) and took nothing
    assert runner.calls == []
    assert (await queue.stats()).pending == 0  # still waiting in the queue, for a worker that can run it
    assert series(metrics, "captioner_job_claims_paused") == 1
    refusal[0] = None
    await run_until(lambda: runner.calls != [])
    job = await queue.get("1" * 32)
    await run_until(lambda: store._jobs["1" * 32].status == "success")
    assert series(metrics, "captioner_job_claims_paused") == 0
    await worker.close(1)
    assert job is not None


# ---------------------------------------------------------------------------------------------- releases


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ModelUnavailable("the model process is restarting", retry_after_s=1), "model_unavailable"),
        (Overloaded("queue full", retry_after_s=1), "overloaded"),
        (ModelLost(), "model_lost"),
        (RequestTimeout(), "timeout"),  # an async job (no caller deadline): this replica's queue was too slow
    ],
    ids=["model-down", "overloaded", "model-lost", "local-timeout"],
)
async def test_a_worker_side_outage_releases_the_job_without_using_its_last_attempt(
    error: BaseException, reason: str
) -> None:
    metrics = Metrics()
    # The last attempt: a failure that counted would end the job here, as a dead letter.
    queue = await run_one(Claim(request(), attempt=3, token="1-0"), Runner(error), metrics=metrics)
    assert queue.released == [("a" * 32, reason == "model_lost")]
    assert queue.finished == [] and queue.abandoned == [] and queue.settled == []
    assert series(metrics, "captioner_job_releases_total", f'reason="{reason}"') == 1
    assert series(metrics, "captioner_job_dead_letters_total") == 0


async def test_a_model_failure_still_uses_attempts_and_ends_at_the_last() -> None:
    queue = await run_one(Claim(request(), attempt=2, token="1-0"), Runner(ModelError()))
    assert queue.abandoned == ["a" * 32] and queue.released == []  # attempt 2 of 3: left for another try
    last = await run_one(Claim(request(), attempt=3, token="1-0"), Runner(ModelError()))
    assert [(job_id, status) for job_id, status, _ in last.finished] == [("a" * 32, "error")]
    assert last.released == []


async def test_a_job_whose_batches_keep_dying_with_their_model_process_ends_as_a_dead_letter() -> None:
    assert lost_limit(3) == 3 and lost_limit(1) == 2
    metrics = Metrics()
    queue = await run_one(Claim(request(), attempt=1, token="1-0", lost=2), Runner(ModelLost()), metrics=metrics)
    ((_, status, result),) = queue.finished
    assert status == "error" and result["error"]["code"] == "model_error"
    assert "died 3 times" in result["error"]["message"]
    assert queue.released == [] and series(metrics, "captioner_job_dead_letters_total") == 1


async def test_a_released_memory_job_waits_at_the_front_and_runs_once_the_model_is_back() -> None:
    store = MemoryJobStore(max_jobs=10, clock=lambda: NOW)
    queue = MemoryJobQueue(store, ttl_s=60, max_keys=10, clock=lambda: NOW)
    runner = Runner(ModelUnavailable("down", retry_after_s=0.1), ModelLost(retry_after_s=0.1))
    worker = JobWorker(queue, runner, metrics=Metrics(), capacity=1, request_timeout_s=30, lease_s=30,
                       clock=lambda: NOW)  # fmt: skip
    worker.start()
    await queue.submit(request("1" * 32), idempotency_key=None)
    await queue.submit(request("2" * 32), idempotency_key=None)
    await run_until(lambda: all(store._jobs[n * 32].status == "success" for n in "12"))
    await worker.close(1)
    # The first job was tried three times (two outages, then success) before the second ever ran.
    assert [job_id[0] for job_id, _ in runner.calls] == ["1", "1", "1", "2"]


# ---------------------------------------------------------------------------------------------- deadlines


async def test_an_expired_relayed_job_is_answered_504_once_without_running() -> None:
    runner = Runner()
    metrics = Metrics()
    queue = await run_one(Claim(request(deadline=NOW - 0.001), attempt=1, token="1-0"), runner, metrics=metrics)
    assert runner.calls == []  # no model time for a caller who is gone
    ((_, status, result),) = queue.finished
    assert status == "error" and result["error"]["code"] == "timeout"
    assert queue.settled == ["a" * 32] and queue.released == [] and queue.abandoned == []
    assert series(metrics, "captioner_job_expired_total") == 1


async def test_a_relayed_job_runs_under_its_callers_deadline_and_a_timeout_is_not_retried() -> None:
    runner = Runner(RequestTimeout())
    before = time.monotonic()
    queue = await run_one(Claim(request(deadline=NOW + 2.0), attempt=1, token="1-0"), runner)
    ((_, deadline),) = runner.calls
    assert before + 1.5 < deadline <= time.monotonic() + 2.0  # the caller's 2 s, not request_timeout_s (30 s)
    ((_, status, result),) = queue.finished
    assert status == "error" and result["error"]["code"] == "timeout"
    assert queue.abandoned == [] and queue.released == []  # attempt 1 of 3, yet not tried again


async def test_an_outage_after_the_callers_deadline_is_answered_504_not_released() -> None:
    now = [NOW]

    class LateRunner(Runner):
        async def __call__(self, job: JobRequest, deadline: float) -> dict[str, Any]:
            now[0] = NOW + 5  # the model went down and the caller's deadline passed meanwhile
            raise ModelUnavailable("down", retry_after_s=1)

    queue = ScriptedQueue([Claim(request(deadline=NOW + 1), attempt=1, token="1-0")])
    worker = JobWorker(queue, LateRunner(), metrics=Metrics(), capacity=1, request_timeout_s=30, lease_s=30,
                       clock=lambda: now[0])  # fmt: skip
    worker.start()
    await run_until(lambda: queue.done)
    await worker.close(1)
    assert queue.released == [] and [status for _, status, _ in queue.finished] == ["error"]
    assert queue.finished[0][2]["error"]["code"] == "timeout"


async def test_the_deadline_and_the_attempts_used_travel_in_the_stream_payload() -> None:
    original = request(deadline=NOW + 12.5, url=None)
    decoded = decode_request("a" * 32, encode_request(original, spent=2, lost=1), b"image")
    assert decoded.request == original and decoded.request.deadline == NOW + 12.5
    assert (decoded.spent, decoded.lost, decoded.lost_input) == (2, 1, False)
    # A payload written before these fields existed still reads: no deadline, nothing spent.
    old = b'{"owner": null, "num_captions": 1, "url": null, "callback_url": null, "image": true}'
    legacy = decode_request("b" * 32, old, b"image")
    assert (legacy.request.deadline, legacy.spent, legacy.lost, legacy.lost_input) == (None, 0, 0, False)


async def test_the_relay_gives_the_job_its_callers_deadline_in_wall_clock_time() -> None:
    submitted: list[JobRequest] = []

    class Jobs:
        async def submit(self, job: JobRequest, *, idempotency_key: str | None = None) -> Submitted:
            submitted.append(job)
            return Submitted(Job(job.job_id, "processing", None, None, NOW + 60), replayed=False)

        async def wait(self, job_id: str, *, principal: str | None, deadline: float) -> Job:
            return Job(job_id, "success", SUCCESS, None, NOW + 60)

    relay = JobRelay(Jobs())  # type: ignore[arg-type]
    await relay.caption(CaptionCommand(b"image", None, 1, time.monotonic() + 7.0))
    (job,) = submitted
    assert job.deadline is not None and time.time() + 6.5 < job.deadline <= time.time() + 7.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
