"""The admission budget: tickets, refusals with Retry-After before the body is read, per-caller job caps."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from captioner.errors import Overloaded, RateLimited
from captioner.guard.admission import AdmissionBudget, AdmissionGate, admission_capacity, admission_ticket
from captioner.observability.metrics import Metrics
from tests.conftest import metric_value, tiny_settings


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


def test_a_caller_may_run_only_so_many_jobs_and_others_are_not_held_back() -> None:
    budget = AdmissionBudget(10, jobs_per_principal=2)
    done_a = [budget.start_job("key:a"), budget.start_job("key:a")]
    with pytest.raises(RateLimited) as refused:
        budget.start_job("key:a")
    assert refused.value.status_code == 429 and "Retry-After" in refused.value.headers
    budget.start_job("key:b")  # another caller is not affected
    done_a[0]()
    done_a[0]()  # idempotent
    assert budget.jobs_running("key:a") == 1
    budget.start_job("key:a")
    for finish in done_a[1:]:
        finish()
    assert budget.jobs_running("key:a") == 1


def test_auto_capacity_is_the_queue_plus_two_batches(tiny_model_dir: Any) -> None:
    settings = tiny_settings(tiny_model_dir, batching={"max_queue": 100, "max_batch_size": 8})
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


def test_a_ticket_handed_to_a_job_outlives_the_request() -> None:
    budget = AdmissionBudget(3)
    tickets: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ticket = admission_ticket(scope)
        ticket.handed_over = True
        tickets.append(ticket)
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_gate(budget, app, [])
    assert budget.in_use == 1  # the job holds it
    tickets[0].release()
    assert budget.in_use == 0
