"""The app's lifespan below HTTP: what a SIGHUP reload applies, and one drain budget for everything accepted.

A fake captioner (tests/support/fakes.py) stands in for the model: these tests are about which settings each variant
runs with and how the shutdown shares its time, not about captions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from captioner.config import Settings, load_settings
from captioner.http.app import create_app
from captioner.jobs.queue import JobRequest
from captioner.model.process_worker import ModelProcessDied
from captioner.runtime.state import Runtime
from tests.support.fakes import FakeCaptioner

pytestmark = pytest.mark.anyio

GUARD_S = 60  # only against a hang: start-up with a fake model takes milliseconds


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runtime]:
    """The app's lifespan, started (fake model loaded, warmed up, ready) and shut down around the block."""
    app = create_app(settings, FakeCaptioner())
    state: Runtime = app.state.captioner
    async with app.router.lifespan_context(app):

        async def ready() -> None:
            while not state.ready:
                assert state.load_error is None, state.load_error
                await asyncio.sleep(0.01)

        await asyncio.wait_for(ready(), GUARD_S)
        yield state


def config_file(path: Path, content: dict[str, object]) -> Settings:
    path.write_text(yaml.safe_dump(content))
    return load_settings(path, {})


async def test_a_reload_applies_the_models_list_and_nothing_else(tmp_path: Path) -> None:
    running_settings = load_settings(None, {}).replace("batching", max_wait_ms=7, max_batch_size=5)
    running_settings = running_settings.replace("generation", num_beams=2)
    async with running(running_settings) as state:
        assert state.pool is not None
        default = state.pool.router.get("default")
        assert default is not None

        # Every other section changed in the file: none of it applies, and the default variant is untouched.
        elsewhere = {
            "model": {"path": str(tmp_path / "other-weights"), "prompt": "an image of "},
            "generation": {"num_beams": 6},
            "batching": {"max_batch_size": 2, "max_wait_ms": 900},
        }
        await state.reload(config_file(tmp_path / "a.yaml", elsewhere))
        assert state.pool.router.get("default") is default  # not reloaded, not replaced
        assert default.settings == running_settings
        assert default.service.batcher.max_batch_size == 5

        # Now a models list too: it applies, its entries' unset keys come from the *running* model section.
        listed = {
            **elsewhere,
            "models": [{"variant": "a", "weight": 1}, {"variant": "b", "weight": 3, "revision": "v2"}],
        }
        await state.reload(config_file(tmp_path / "b.yaml", listed))
        assert [name for name, _ in state.pool.router.weights] == ["a", "b"]
        a, b = state.pool.router.get("a"), state.pool.router.get("b")
        assert a is not None and b is not None
        assert a.settings.model == running_settings.model
        assert b.settings.model == dataclasses.replace(running_settings.model, revision="v2")
        for variant in (a, b):
            assert variant.settings.generation == running_settings.generation
            assert variant.settings.batching == running_settings.batching
            assert variant.service.batcher.max_batch_size == 5
        assert [(v.variant, v.weight) for v in state.settings.models] == [("a", 1.0), ("b", 3.0)]
        assert state.settings.model == running_settings.model


async def test_one_drain_budget_from_the_sigterm_for_batches_and_jobs_together() -> None:
    """``drain_timeout_s`` is the whole drain: what the HTTP drain and the jobs used is gone for the batchers."""
    now = [1000.0]
    given: dict[str, float] = {}
    async with running(load_settings(None, {}).replace("server", drain_timeout_s=30)) as state:
        state.clock = lambda: now[0]
        assert state.pool is not None
        close_pool, close_jobs = state.pool.close, state.jobs.close

        async def jobs_close(timeout_s: float) -> None:
            given["jobs"] = timeout_s
            await close_jobs(timeout_s)
            now[0] += 20  # the jobs took 20 s to finish

        async def pool_close(timeout_s: float) -> bool:
            given["pool"] = timeout_s
            return await close_pool(timeout_s)

        state.pool.close = pool_close  # type: ignore[method-assign]
        state.jobs.close = jobs_close  # type: ignore[method-assign]
        state.start_draining()  # SIGTERM: the budget starts here
        now[0] += 4  # the HTTP drain took 4 s; then the lifespan shuts down: jobs first, then the batchers
    assert given == {"jobs": 26.0, "pool": 6.0}
    assert state.drain_left_s() == 6.0


async def test_a_job_handed_back_to_the_queue_still_counts_against_its_caller() -> None:
    """A job whose batch died with the model process goes back to the queue (jobs/worker.py): it is still the
    caller's outstanding job until it ends, so the caller's cap (jobs.max_running_per_principal) still holds."""
    fake = FakeCaptioner()
    batches = 0
    second_batch, proceed = threading.Event(), threading.Event()

    def first_batch_dies(texts: list[str]) -> BaseException | None:  # on the model thread
        nonlocal batches
        batches += 1
        if batches == 1:
            return ModelProcessDied("killed with the batch in it")
        second_batch.set()  # the job was handed back and claimed again: look at the quota now
        proceed.wait(GUARD_S)
        return None

    fake.raise_when = first_batch_dies
    settings = load_settings(None, {}).replace("jobs", max_running_per_principal=1)
    app = create_app(settings, fake)
    state: Runtime = app.state.captioner
    caller = "ip:198.51.100.7"
    async with app.router.lifespan_context(app):
        while not state.ready:
            await asyncio.sleep(0.01)

        async def is_open(job_id: str) -> bool:
            job = await state.jobs.queue.get(job_id)
            return job is not None and job.status == "processing"

        place = await state.job_quota.reserve(caller, is_open)
        request = JobRequest("a" * 32, None, 1, image=b"an image")
        await state.jobs.submit(request, idempotency_key=None)
        place.bind(request.job_id, len(b"an image"))
        assert await asyncio.to_thread(second_batch.wait, GUARD_S)
        counted_while_handed_back = state.job_quota.outstanding(caller)
        proceed.set()

        async def ended() -> None:
            while (job := await state.jobs.queue.get(request.job_id)) is None or job.status == "processing":
                await asyncio.sleep(0.01)

        await asyncio.wait_for(ended(), GUARD_S)
        final = await state.jobs.queue.get(request.job_id)
    assert counted_while_handed_back == 1
    assert final is not None and final.status == "success"
    assert state.job_quota.outstanding(caller) == 0  # the run that succeeded ended it
