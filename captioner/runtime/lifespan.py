"""Start-up and shutdown: load and warm the model in the background (not on an ``api``-role replica), then
consume the job queue; reload on SIGHUP (the keys file, and the variants); drain on the way out (jobs first: they
need the batcher).

Once the variants are up, two watches run beside the traffic: the registry's aliases (when ``registry.path``
is set) and the canary analysis. They stop first at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from captioner.config import ConfigError, Settings
from captioner.errors import Overloaded
from captioner.guard.usage import answered_outcome, failed_outcome
from captioner.jobs.queue import JobRequest
from captioner.jobs.worker import RETRYABLE
from captioner.rollout.canary import CANARY_VARIANT
from captioner.rollout.registry_source import cascade_first
from captioner.runtime.components import canary_fleet
from captioner.runtime.state import Runtime
from captioner.serving.outcome import outcome_body
from captioner.serving.use_case import CaptionCommand

if TYPE_CHECKING:  # the model side: imported when a model is loaded, never on an api replica
    from captioner.serving.variants import LoadModel, VariantPool

logger = logging.getLogger("captioner.app")


def lifespan(
    runtime: Runtime,
    load_model: LoadModel,
    on_fatal: Callable[[], None] | None,
    reload_settings: Callable[[], Settings] | None,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    settings = runtime.settings

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        runtime.loop = asyncio.get_running_loop()
        runtime.jobs.start()
        if runtime.drift_alert is not None:
            runtime.drift_alert.start(runtime.loop)
        watches: list[asyncio.Task[None]] = []
        if runtime.keys_watch is not None:  # every role: a key added or removed applies without a restart
            watches.append(asyncio.create_task(runtime.keys_watch.run(), name="captioner-keys-file"))
        loader = None
        if not runtime.serves_model:
            runtime.ready = True  # nothing to load: jobs are captioned by the worker replicas
            logger.info("ready: role api, no model here (workers consume the job queue)", extra={"role": "api"})
        else:
            loader = asyncio.create_task(_load(runtime, load_model, on_fatal, watches), name="captioner-load")
        _on_sighup(runtime, reload_settings if runtime.serves_model else None)
        try:
            yield
        finally:
            runtime.start_draining()  # a no-op after SIGTERM, which started it (and the drain budget) already
            if loader is not None and not loader.done():
                loader.cancel()
            for watch in watches:
                watch.cancel()
            # One budget for everything accepted, counted from the SIGTERM: what the HTTP drain used is gone.
            # Running jobs need the batcher: they finish (and are acked) before the pool closes.
            await runtime.jobs.close(runtime.drain_left_s())
            if runtime.pool is not None:
                finished = await runtime.pool.close(runtime.drain_left_s())
                if not finished:
                    logger.warning("drain timed out after %.0f s", settings.server.drain_timeout_s)
            if runtime.canary is not None:
                await runtime.canary.aclose()
            await runtime.limiter.aclose()
            await runtime.usage.aclose()
            await runtime.use_case.privacy.aclose()
            await runtime.feedback.aclose()
            if runtime.drift_alert is not None:
                await runtime.drift_alert.aclose()
            await runtime.outbound.aclose()

    return run


async def _load(
    runtime: Runtime, load_model: LoadModel, on_fatal: Callable[[], None] | None, watches: list[asyncio.Task[None]]
) -> None:
    from captioner.serving.variants import VariantPool  # here: an api replica never imports the model side

    settings = runtime.settings
    try:
        registry = runtime.registry
        if registry is not None:
            await asyncio.to_thread(registry.refresh)
        variants = registry.resolve(settings) if registry is not None else settings
        first = await asyncio.to_thread(cascade_first, settings)  # the cascade's first model, if any
        pool = VariantPool(
            variants,
            runtime.metrics,
            load_model=load_model,
            observer=runtime.drift,
            on_fatal=lambda reason: _model_failed(runtime, on_fatal, reason),
            optional={CANARY_VARIANT},  # a broken canary is rolled back, never takes the replica out
            first=first,
        )
        runtime.pool = pool
        await pool.start()
        if not runtime.draining:
            runtime.ready = True
            _start_worker(runtime)
        _start_watches(runtime, pool, watches)
        service = pool.router.any_service()
        assert service is not None
        model = service.captioner
        logger.info(
            "ready: model %s on %s (%s), variants %s", model.name, model.device, model.dtype,
            ", ".join(f"{name}={weight:g}" for name, weight in pool.router.weights),
            extra={"model": model.name, "revision": model.revision, "device": model.device,
                   "dtype": model.dtype, "untrained": model.untrained, "config_source": settings.source},
        )  # fmt: skip
    except Exception as exc:
        runtime.load_error = f"{type(exc).__name__}: {exc}"
        logger.exception("model failed to load")
        if on_fatal is not None:
            on_fatal()


def _model_failed(runtime: Runtime, on_fatal: Callable[[], None] | None, reason: str) -> None:
    """A model broke for good (a CUDA error): not ready from now on; the server drains and exits non-zero."""
    runtime.fatal_error = reason
    if on_fatal is not None:
        on_fatal()


def _start_worker(runtime: Runtime) -> None:
    """Consume the job queue into this replica's batcher (roles all and worker, once the model is warm)."""
    settings = runtime.settings
    batching = settings.batching

    async def run_job(request: JobRequest, deadline: float) -> dict[str, Any]:
        # A running job holds an admission ticket like a request in flight (it waits for one: it is accepted
        # already), and stops counting against its caller's outstanding jobs when it ends. It is accepted
        # work, so it skips the use case's admission (a drain finishes it rather than refusing it).
        command = CaptionCommand(
            request.image, request.url, request.num_captions, deadline, api_key=request.owner,
            assignment_key=request.assignment_key, tenant=request.tenant,
        )  # fmt: skip
        # An async job's usage is counted here, where it ends; a relayed sync request's by the replica it came to.
        tenant = request.tenant if request.deadline is None else None
        try:
            async with await runtime.admission.acquire_waiting():
                outcome = await runtime.use_case.caption(command)
        except RETRYABLE:
            # The worker may hand the job back or try it again: it still counts against its caller. If it ended
            # after all (a final timeout, its last attempt), the quota's look-up finds that when the caller is at
            # the cap (guard/job_quota.py).
            raise
        except BaseException as exc:
            runtime.job_quota.ended(request.job_id)
            runtime.usage.record(tenant, failed_outcome(exc))
            raise
        runtime.job_quota.ended(request.job_id)
        runtime.usage.record(tenant, answered_outcome(outcome.cached))
        return outcome_body(outcome, settings.model.name)

    def available() -> Overloaded | None:
        # Claim only while this replica can caption: a replica whose model is down leaves the jobs to others.
        pool = runtime.pool
        return Overloaded("the model is not loaded") if pool is None else pool.work_refusal()

    runtime.jobs.start_worker(
        run_job,
        # Enough jobs to fill one batch while the one before runs; the rest wait in the queue.
        capacity=min(2 * batching.max_batch_size, batching.max_queue),
        request_timeout_s=batching.request_timeout_s,
        lease_s=settings.jobs.lease_s,
        callbacks=runtime.callbacks,
        available=available,
    )


def _start_watches(runtime: Runtime, pool: VariantPool, watches: list[asyncio.Task[None]]) -> None:
    from captioner.rollout.canary_watch import CanaryWatch  # reads the variants' live stats: the model side

    registry = runtime.registry
    runtime.canary = CanaryWatch(
        pool,
        runtime.settings.canary,
        runtime.metrics,
        feedback=runtime.feedback.stats,  # user approval per variant (POST /api/v1/feedback)
        on_rollback=registry.on_canary_rollback if registry is not None else None,
        fleet=canary_fleet(runtime.settings),  # with Redis: the fleet's figures, one verdict
    )
    watches.append(asyncio.create_task(runtime.canary.run(), name="captioner-canary"))
    if registry is not None:
        watches.append(
            asyncio.create_task(registry.watch(lambda: runtime.reload(runtime.settings)), name="captioner-registry")
        )


def _on_sighup(runtime: Runtime, reload_settings: Callable[[], Settings] | None) -> None:
    """SIGHUP: the keys file is read again (when there is one), and the config's `models` (where a model is
    served); nothing else."""
    if runtime.keys_watch is None and reload_settings is None:
        return

    async def reload() -> None:
        if runtime.keys_watch is not None:
            await runtime.keys_watch.reload()  # a bad file is logged and refused there
        if reload_settings is None:
            return
        try:
            new = await asyncio.to_thread(reload_settings)
            await runtime.reload(new)
        except ConfigError as exc:
            logger.error("reload refused, the running config stays: %s", exc)
        except Exception:
            logger.exception("reload failed; the running variants stay")

    try:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: runtime.spawn(reload(), "captioner-reload")
        )
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no SIGHUP here
        logger.warning("SIGHUP reload unavailable in this process")
