"""Start-up and shutdown: load and warm the model in the background, reload on SIGHUP, drain on the way out."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette

from captioner.config import ConfigError, Settings
from captioner.http.state import AppState
from captioner.model.protocol import Captioner
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
        loader = asyncio.create_task(_load(state, load_model, on_fatal), name="captioner-load")
        if reload_settings is not None:
            _on_sighup(state, reload_settings)
        try:
            yield
        finally:
            state.start_draining()
            if not loader.done():
                loader.cancel()
            if state.pool is not None:
                finished = await state.pool.close(settings.server.drain_timeout_s)
                if not finished:
                    logger.warning("drain timed out after %.0f s", settings.server.drain_timeout_s)
            await state.jobs.close(settings.server.drain_timeout_s)  # accepted jobs were drained above
            await state.url_fetcher.aclose()
            await state.feedback.store.aclose()

    return run


async def _load(state: AppState, load_model: LoadModel, on_fatal: Callable[[], None] | None) -> None:
    settings = state.settings
    try:
        pool = VariantPool(settings, state.metrics, load_model=load_model, drift=state.drift)
        state.pool = pool
        await pool.start()
        if not state.draining:
            state.set_ready(True)
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
