"""The admission budget: tickets, refusals with Retry-After before the body is read, per-caller job caps."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from captioner.errors import Overloaded, RateLimited
from captioner.guard.admission import AdmissionBudget, AdmissionGate, admission_capacity, admission_ticket
from captioner.guard.job_quota import JobQuota
from captioner.observability.metrics import Metrics
from tests.support.metrics import metric_value
from tests.support.model import tiny_settings


def test_tickets_are_counted_and_refused_past_capacity_with_retry_after() -> None:
    metrics = Metrics()
    budget = AdmissionBudget(2, metrics=metrics)
    first, second = budget.acquire(), budget.acquire()
    assert budget.in_use == 2
    with pytest.raises(Overloaded) as refused:
        budget.acquire()
    assert refused.value.status_code == 503 and int(refused.value.headers["Retry-After"]) >= 1
    first.release()
    first.release()  # twice is once
    assert budget.in_use == 1
    budget.acquire()
    second.release()
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "captioner_admission_in_use") == 1
    assert metric_value(text, "captioner_admission_capacity") == 2
    assert metric_value(text, "captioner_admission_refused_total", 'reason="budget"') == 1


def test_a_caller_may_have_only_so_many_outstanding_jobs_and_others_are_not_held_back() -> None:
    now = [0.0]
    quota = JobQuota(per_principal=2, max_bytes=100, clock=lambda: now[0])

    async def never_open(job_id: str) -> bool:
        return False

    async def always_open(job_id: str) -> bool:
        return True

    async def scenario() -> None:
        first = await quota.reserve("key:a", always_open)
        second = await quota.reserve("key:a", always_open)
        with pytest.raises(RateLimited) as refused:
            await quota.reserve("key:a", always_open)
        assert refused.value.status_code == 429 and "Retry-After" in refused.value.headers
        await quota.reserve("key:b", always_open)  # another caller is not affected
        first.bind("job-1", 40)
        second.cancel()
        second.cancel()  # idempotent
        assert quota.outstanding("key:a") == 1 and quota.bytes == 40
        with pytest.raises(Overloaded):
            await quota.check_bytes(61, always_open)  # 40 + 61 > 100
        quota.ended("job-1")
        quota.ended("job-1")  # idempotent
        assert quota.outstanding("key:a") == 0 and quota.bytes == 0
        # A job another replica ran (queue: redis) is let go once the queue says it ended.
        third, fourth = await quota.reserve("key:c", always_open), await quota.reserve("key:c", always_open)
        third.bind("job-3", 0)
        fourth.bind("job-4", 0)
        with pytest.raises(RateLimited):  # the queue was looked up less than a second ago: not again yet
            await quota.reserve("key:c", never_open)
        now[0] += 1.5
        await quota.reserve("key:c", never_open)  # at its cap: the two are looked up, found ended, released
        assert quota.outstanding("key:c") == 1

    asyncio.run(scenario())


def test_a_running_job_waits_for_a_ticket_instead_of_being_refused() -> None:
    async def scenario() -> None:
        budget = AdmissionBudget(1)
        held = budget.acquire()
        waiting = asyncio.ensure_future(budget.acquire_waiting())
        await asyncio.sleep(0)
        assert not waiting.done() and budget.in_use == 1
        held.release()
        async with await waiting:
            assert budget.in_use == 1
        assert budget.in_use == 0

    asyncio.run(scenario())


def test_auto_capacity_is_the_queue_plus_two_batches() -> None:
    settings = tiny_settings(batching={"max_queue": 100, "max_batch_size": 8})
    assert admission_capacity(settings) == 116
    assert admission_capacity(settings.replace("limits", max_in_flight=7)) == 7


def run_gate(budget: AdmissionBudget, app: Any, body_read: list[bool]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        body_read.append(True)
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gate = AdmissionGate(app, budget=budget, admits=lambda scope: scope["path"] == "/work")
    scope = {"type": "http", "method": "POST", "path": "/work", "headers": [], "query_string": b""}
    asyncio.run(gate(scope, receive, send))
    return sent


def test_the_gate_refuses_before_the_body_is_read_and_gives_tickets_back() -> None:
    budget = AdmissionBudget(1)
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(admission_ticket(scope))
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    body_read: list[bool] = []
    assert run_gate(budget, app, body_read)[0]["status"] == 200
    assert budget.in_use == 0 and seen[0] is not None and body_read == [True]

    held = budget.acquire()  # the budget is spent
    body_read.clear()
    sent = run_gate(budget, app, body_read)
    assert sent[0]["status"] == 503 and body_read == [] and len(seen) == 1
    headers = dict(sent[0]["headers"])
    assert int(headers[b"retry-after"]) >= 1
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "overloaded"
    held.release()
