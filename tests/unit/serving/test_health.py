"""Model health: failing batches, a fatal device error and a model process that dies take the model out.

Below HTTP, through ``CaptionService``, with a fake model whose faults the tests control (the HTTP view, with
the real tiny BLIP, is tests/unit/http/test_health_http.py; a real dying process, tests/system/).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from captioner.errors import ModelError, ModelUnavailable
from captioner.model.device_errors import is_fatal_device_error
from captioner.model.preprocessing import ImageInfo, PreparedImage
from captioner.model.process_worker import ModelProcessError
from captioner.model.protocol import Caption, CaptionJob, ModelListener
from captioner.observability.metrics import Metrics
from captioner.serving.service import CaptionService
from tests.support.metrics import metric_value
from tests.support.model import tiny_settings
from tests.support.waits import async_wait_for

pytestmark = pytest.mark.anyio

GUARD_S = 30  # a wall-clock bound on awaits that would hang forever if a future were left unresolved


def cuda_error() -> BaseException:
    return torch.AcceleratorError("CUDA error: an illegal memory access was encountered")


class FlakyCaptioner:
    """Captions an image with its own bytes; its batches and warm-ups raise while told to."""

    name = "fake"
    revision = "test"
    device = "cpu"
    dtype = "float32"
    untrained = True

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.batch_error: Callable[[], BaseException] | None = None
        self.warm_up_error: Callable[[], BaseException] | None = None
        self.warm_ups = 0

    def preprocess(self, data: bytes) -> PreparedImage:
        values = torch.tensor(list(data), dtype=torch.float32)
        return PreparedImage(pixel_values=values, info=ImageInfo(format="PNG", width=1, height=1, mode="RGB"))

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        texts = [bytes(int(v) for v in job.pixel_values.tolist()).decode() for job in jobs]
        self.batches.append(texts)
        if self.batch_error is not None:
            raise self.batch_error()
        return [[Caption(text, 0.5)] for text in texts]

    def warm_up(self) -> None:
        self.warm_ups += 1
        if self.warm_up_error is not None:
            raise self.warm_up_error()


class SelfHealingCaptioner(FlakyCaptioner):
    """A fake with ``watch``: the test plays the process supervisor, from a thread of its own."""

    listener: ModelListener | None = None

    def watch(self, listener: ModelListener) -> None:
        self.listener = listener


def make_service(model: Any, **health: Any) -> tuple[CaptionService, Metrics, list[str]]:
    settings = tiny_settings(
        batching={"max_batch_size": 1, "max_wait_ms": 0},
        cache={"max_entries": 0},  # every request reaches the model
        health={"max_consecutive_failures": 3, "probe_interval_s": 0.05, **health},
    )
    metrics = Metrics()
    fatal: list[str] = []
    service = CaptionService(settings, model, metrics, on_fatal=fatal.append)
    service.start()
    return service, metrics, fatal


async def caption(service: CaptionService, data: bytes) -> Any:
    """The outcome, or the exception the request raised."""
    try:
        return await asyncio.wait_for(service.caption(data, 1), GUARD_S)
    except Exception as exc:
        return exc


def gauge(metrics: Metrics, name: str) -> float:
    from prometheus_client import generate_latest

    return metric_value(generate_latest(metrics.registry).decode(), name, 'variant="default"')


# ---------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (torch.AcceleratorError("CUDA error: out of memory"), False),
        (RuntimeError("shape mismatch"), False),
        (ValueError("CUDA error: not really, a ValueError"), False),
        # The child's error, quoted in the server process: the child handles its own context (it exits).
        (ModelProcessError("AcceleratorError: CUDA error: an illegal memory access was encountered"), False),
    ],
    ids=["accelerator", "device-assert", "cublas", "oom", "oom-as-accelerator", "plain", "valueerror", "child"],
)
def test_which_errors_leave_the_device_unusable(error: BaseException, fatal: bool) -> None:
    assert is_fatal_device_error(error) is fatal


# ---------------------------------------------------------------------------------------------- failing batches


async def test_consecutive_failed_batches_take_the_model_out_until_a_probe_succeeds() -> None:
    model = FlakyCaptioner()
    service, metrics, fatal = make_service(model)
    try:
        model.batch_error = lambda: RuntimeError("model exploded")
        model.warm_up_error = lambda: RuntimeError("still exploding")
        for i in range(3):
            assert service.health.ready
            result = await caption(service, f"fail-{i}".encode())
            assert isinstance(result, ModelError) and result.status_code == 500
        assert not service.health.ready
        assert service.health.problem == "model failing: 3 batches failed in a row"
        assert gauge(metrics, "captioner_model_up") == 0
        assert gauge(metrics, "captioner_model_consecutive_failures") == 3
        await async_wait_for(lambda: model.warm_ups >= 2, "probes that fail")  # the first at once, then on an interval
        batches_before = len(model.batches)
        refused = await caption(service, b"while-failing")
        assert isinstance(refused, ModelUnavailable)
        assert (refused.status_code, refused.code) == (503, "overloaded") and int(refused.headers["Retry-After"]) >= 1
        assert len(model.batches) == batches_before  # refused without touching the model

        model.batch_error = model.warm_up_error = None  # the model recovers: the next probe passes
        await async_wait_for(lambda: service.health.ready, "a probe that succeeds")
        assert gauge(metrics, "captioner_model_up") == 1 and gauge(metrics, "captioner_model_consecutive_failures") == 0
        assert (await caption(service, b"after")).captions[0].text == "after"
        assert fatal == []
    finally:
        await service.close(5)


async def test_a_success_resets_the_count() -> None:
    model = FlakyCaptioner()
    service, metrics, _ = make_service(model)
    try:
        for round_ in range(2):
            model.batch_error = lambda: RuntimeError("model exploded")
            for i in range(2):
                assert isinstance(await caption(service, f"fail-{round_}-{i}".encode()), ModelError)
            assert gauge(metrics, "captioner_model_consecutive_failures") == 2
            model.batch_error = None
            assert (await caption(service, f"ok-{round_}".encode())).captions
            assert gauge(metrics, "captioner_model_consecutive_failures") == 0
        assert service.health.ready and model.warm_ups == 0  # never tripped: no probe
    finally:
        await service.close(5)


# ---------------------------------------------------------------------------------------------- fatal device error


async def test_a_cuda_error_fails_its_batch_refuses_the_queue_and_asks_for_a_restart() -> None:
    model = FlakyCaptioner()
    gate = threading.Event()

    def error_once_released() -> BaseException:
        gate.wait(GUARD_S)  # hold the first batch until the others are queued behind it
        return cuda_error()

    model.batch_error = error_once_released
    service, metrics, fatal = make_service(model)
    try:
        requests = [asyncio.ensure_future(caption(service, f"img-{i}".encode())) for i in range(4)]
        # One (a full batch of 1) waits at the model's door behind the first, two in the queue: the one at the
        # door must not touch the failed device either, though the event loop has not heard of it yet.
        await async_wait_for(lambda: service.batcher.queue_depth == 2, "requests queued behind the first")
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*requests), GUARD_S)  # nobody hangs
        errors = sorted(type(r).__name__ for r in results)
        assert errors == ["ModelError", "ModelUnavailable", "ModelUnavailable", "ModelUnavailable"], results
        assert len(model.batches) == 1  # the broken device was not touched again
        assert len(fatal) == 1 and "CUDA error: an illegal memory access" in fatal[0]
        assert service.health.problem is not None and service.health.problem.startswith("failed: device error")
        assert gauge(metrics, "captioner_model_up") == 0
        later = await caption(service, b"later")
        assert isinstance(later, ModelUnavailable) and later.headers["Retry-After"] == "1"
        assert len(model.batches) == 1 and len(fatal) == 1  # reported once
    finally:
        await service.close(5)


# ---------------------------------------------------------------------------------------------- a self-healing model


async def test_a_model_process_going_down_and_up_is_heard_from_its_thread() -> None:
    model = SelfHealingCaptioner()
    service, metrics, fatal = make_service(model)
    try:
        listener = model.listener
        assert listener is not None  # start() registered it

        def from_thread(event: Callable[[], None]) -> None:
            thread = threading.Thread(target=event)
            thread.start()
            thread.join()

        from_thread(lambda: listener.model_down("the model process died (killed by SIGKILL)", 4.0))
        await async_wait_for(lambda: not service.health.ready, "the model to be down")
        assert service.health.problem == "model down: the model process died (killed by SIGKILL)"
        refused = await caption(service, b"while-down")
        assert isinstance(refused, ModelUnavailable) and 1 <= int(refused.headers["Retry-After"]) <= 4
        assert model.batches == []

        from_thread(listener.model_up)
        await async_wait_for(lambda: service.health.ready, "the model to be back")
        assert gauge(metrics, "captioner_model_respawns_total") == 1 and gauge(metrics, "captioner_model_up") == 1
        assert (await caption(service, b"after")).captions[0].text == "after"

        from_thread(lambda: listener.model_failed("the model process could not be restarted"))
        await async_wait_for(lambda: bool(fatal), "the fatal report on the loop")
        assert fatal == ["the model process could not be restarted"] and not service.health.ready
    finally:
        await service.close(5)
