"""Start-up and shutdown: load and warm the model in the background (not on an ``api``-role replica), then
consume the job queue; reload on SIGHUP; drain on the way out (jobs first: they need the batcher).

Once the variants are up, two watches run beside the traffic: the registry's aliases (when ``registry.path``
is set) and the canary analysis. They stop first at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette

from captioner.config import ConfigError, Settings
from captioner.http.job_runner import job_runner
from captioner.model.protocol import Captioner
from captioner.rollout.canary_watch import CanaryWatch
from captioner.runtime.state import AppState
from captioner.serving.variants import VariantPool

logger = logging.getLogger("captioner.app")

LoadModel = Callable[[Settings], Captioner]


def lifespan(
    state: AppState,
    load_model: LoadModel,
    on_fatal: Callable[[], None] | None,
    reload_settings: Callable[[], Settings] | None,
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    settings = state.settings

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        state.jobs.start()
        if state.webhook is not None:
            state.webhook.start(state.loop)
        watches: list[asyncio.Task[None]] = []
        loader = None
        if state.role == "api":
            state.set_ready(True)  # nothing to load: jobs are captioned by the worker replicas
            logger.info("ready: role api, no model here (workers consume the job queue)", extra={"role": "api"})
        else:
            loader = asyncio.create_task(_load(state, load_model, on_fatal, watches), name="captioner-load")
            if reload_settings is not None:
                _on_sighup(state, reload_settings)
        try:
            yield
        finally:
            state.start_draining()  # a no-op after SIGTERM, which started it (and the drain budget) already
            if loader is not None and not loader.done():
                loader.cancel()
            for watch in watches:
                watch.cancel()
            # One budget for everything accepted, counted from the SIGTERM: what the HTTP drain used is gone.
            # Running jobs need the batcher: they finish (and are acked) before the pool closes.
            await state.jobs.close(state.drain_left_s())
            if state.pool is not None:
                finished = await state.pool.close(state.drain_left_s())
                if not finished:
                    logger.warning("drain timed out after %.0f s", settings.server.drain_timeout_s)
            await state.limiter.aclose()
            await state.feedback.store.aclose()
            if state.webhook is not None:
                await state.webhook.aclose()
            await state.outbound.aclose()

    return run


async def _load(
    state: AppState, load_model: LoadModel, on_fatal: Callable[[], None] | None, watches: list[asyncio.Task[None]]
) -> None:
    settings = state.settings
    try:
        registry = state.registry
        if registry is not None:
            await asyncio.to_thread(registry.refresh)
        variants = registry.resolve(settings) if registry is not None else settings
        pool = VariantPool(
            variants,
            state.metrics,
            load_model=load_model,
            drift=state.drift,
            on_fatal=lambda reason: _model_failed(state, on_fatal, reason),
        )
        state.pool = pool
        await pool.start()
        if not state.draining:
            state.set_ready(True)
            _start_worker(state)
        _start_watches(state, pool, watches)
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
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.exception("model failed to load")
        if on_fatal is not None:
            on_fatal()


def _model_failed(state: AppState, on_fatal: Callable[[], None] | None, reason: str) -> None:
    """A model broke for good (a CUDA error): not ready from now on; the server drains and exits non-zero."""
    state.fatal_error = reason
    if on_fatal is not None:
        on_fatal()


def _start_worker(state: AppState) -> None:
    """Consume the job queue into this replica's batcher (roles all and worker, once the model is warm)."""
    settings = state.settings
    batching = settings.batching
    state.jobs.start_worker(
        job_runner(state),
        # Enough jobs to fill one batch while the one before runs; the rest wait in the queue.
        capacity=min(2 * batching.max_batch_size, batching.max_queue),
        request_timeout_s=batching.request_timeout_s,
        lease_s=settings.jobs.lease_s,
        callbacks=state.callbacks,
    )


def _start_watches(state: AppState, pool: VariantPool, watches: list[asyncio.Task[None]]) -> None:
    registry = state.registry
    state.canary = CanaryWatch(
        pool,
        state.settings.canary,
        state.metrics,
        feedback=state.feedback.stats,  # user approval per variant (POST /api/v1/feedback)
        on_rollback=registry.on_canary_rollback if registry is not None else None,
    )
    watches.append(asyncio.create_task(state.canary.run(), name="captioner-canary"))
    if registry is not None:
        watches.append(
            asyncio.create_task(registry.watch(lambda: state.reload(state.settings)), name="captioner-registry")
        )


def _on_sighup(state: AppState, reload_settings: Callable[[], Settings]) -> None:
    async def reload() -> None:
        try:
            new = await asyncio.to_thread(reload_settings)
            await state.reload(new)
        except ConfigError as exc:
            logger.error("reload refused, the running config stays: %s", exc)
        except Exception:
            logger.exception("reload failed; the running variants stay")

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: state.spawn(reload(), "captioner-reload"))
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no SIGHUP here
        logger.warning("SIGHUP reload unavailable in this process")
