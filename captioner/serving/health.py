"""Can a variant's model take work? ``ModelHealth``: written by its ``CaptionService``, read by /readyz.

The model is *ready* while all of these hold:
- it is up. With ``model.worker: process`` its process may die; process_worker.py respawns it and reports
  ``model_down`` / ``model_up`` here (as a ``ModelListener``), and ``model_stalled`` when its watchdog
  (``health.watchdog_s``) killed a process stuck with a batch in flight;
- fewer than ``health.max_consecutive_failures`` batches failed in a row. At that many a probe batch (the
  warm-up image) runs at once, then every ``health.probe_interval_s``, until one succeeds. A probe rather than
  the next request: a replica that reports not ready gets no traffic from its orchestrator, and refuses model
  work meanwhile anyway;
- no fatal device error hit it (device_errors.py: the CUDA context is unusable). ``on_fatal`` then asks the
  server to shut down and exit non-zero, so that the orchestrator restarts the replica with a fresh context.

While not ready, ``admit()`` refuses model work with ``ModelUnavailable`` (503 ``overloaded`` + Retry-After,
which a load balancer retries on another replica); cache hits are still answered. State changes happen on the
event loop: the process supervisor's thread hands its news over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from captioner.config import HealthSettings
from captioner.errors import ModelUnavailable
from captioner.model.device_errors import is_fatal_device_error
from captioner.observability.metrics import Metrics

logger = logging.getLogger("captioner.health")

OnFatal = Callable[[str], None]
T = TypeVar("T")


class ModelHealth:
    def __init__(
        self,
        variant: str,
        metrics: Metrics,
        settings: HealthSettings,
        *,
        probe: Callable[[], Awaitable[None]],
        on_fatal: OnFatal | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.variant = variant
        self.max_failures = settings.max_consecutive_failures
        self.probe_interval_s = settings.probe_interval_s
        self._probe = probe
        self._on_fatal = on_fatal
        self.up = True
        self.down_reason = ""
        self.failures = 0  # batches failed in a row
        self.fatal: str | None = None
        self._retry_at = 0.0  # while not ready: when it may be back (Retry-After)
        self._probing: asyncio.Task[None] | None = None
        self._clock = clock
        # When it last stopped being ready (a ``clock`` instant), None while ready: the canary analysis rolls back
        # a canary that stays down past canary.max_down_s, traffic or none (rollout/canary.py).
        self.unready_since: float | None = None
        self._up_gauge = metrics.model_up.labels(variant)
        self._failures_gauge = metrics.model_consecutive_failures.labels(variant)
        self._respawns = metrics.model_respawns.labels(variant)
        self._watchdog_kills = metrics.model_watchdog_kills.labels(variant)
        self._publish()

    @property
    def ready(self) -> bool:
        return self.up and self.fatal is None and self.failures < self.max_failures

    @property
    def problem(self) -> str | None:
        """Why the model can't take work, for /readyz; None while it can."""
        if self.fatal is not None:
            return f"failed: {self.fatal}"
        if not self.up:
            return f"model down: {self.down_reason}"
        if self.failures >= self.max_failures:
            return f"model failing: {self.failures} batches failed in a row"
        return None

    def admit(self) -> None:
        """Raise ``ModelUnavailable`` unless the model can take work now."""
        if self.ready:
            return
        if self.fatal is not None:
            raise ModelUnavailable("the model failed; this replica is restarting", retry_after_s=1)
        message = "the model is restarting" if not self.up else "the model is failing"
        retry_in_s = max(1.0, self._retry_at - time.monotonic())
        raise ModelUnavailable(f"{message}, retry later", retry_after_s=retry_in_s)

    def watch(self, model: Any) -> None:
        """Hear from ``model`` if it can go down and come back by itself (it has ``watch(listener)``)."""
        watch = getattr(model, "watch", None)
        if callable(watch):
            watch(_LoopListener(asyncio.get_running_loop(), self))

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing

    async def track(self, batch: Awaitable[T]) -> T:
        """Await one batch, counting its success or failure (refused while down, or cancelled: neither)."""
        try:
            result = await batch
        except (ModelUnavailable, asyncio.CancelledError):
            raise
        except BaseException as exc:
            self.batch_failed(exc)
            raise
        self.batch_succeeded()
        return result

    # -- what happened (on the event loop) -----------------------------------------------------------

    def batch_succeeded(self) -> None:
        if self.failures >= self.max_failures:
            logger.warning("variant %s: a batch succeeded; the model takes work again", self.variant)
        self.failures = 0
        self._publish()

    def batch_failed(self, exc: BaseException) -> None:
        if is_fatal_device_error(exc):
            self.model_failed(f"device error: {type(exc).__name__}: {exc}")
            return
        self.failures += 1
        self._publish()
        if self.failures >= self.max_failures and (self._probing is None or self._probing.done()):
            logger.error(
                "variant %s: %d batches failed in a row; not ready until a probe batch succeeds",
                self.variant, self.failures, extra={"variant": self.variant, "event": "model_failing"},
            )  # fmt: skip
            self._probing = asyncio.get_running_loop().create_task(self._probe_until_healthy())

    def model_down(self, reason: str, retry_in_s: float) -> None:
        self.up = False
        self.down_reason = reason
        self._retry_at = time.monotonic() + retry_in_s
        self._publish()

    def model_stalled(self, reason: str, retry_in_s: float) -> None:
        """The watchdog found the model process stuck with a batch in flight: down now; it is being killed."""
        self._watchdog_kills.inc()
        self.model_down(reason, retry_in_s)

    def model_up(self) -> None:
        self.up = True
        self.failures = 0  # the respawned model has just captioned its warm-up image
        self._respawns.inc()
        self._publish()
        logger.warning("variant %s: the model is back", self.variant, extra={"variant": self.variant})

    def model_failed(self, reason: str) -> None:
        if self.fatal is not None:
            return
        self.fatal = reason
        self._publish()
        logger.critical(
            "variant %s: %s; this replica can't serve any more and must be restarted", self.variant, reason,
            extra={"variant": self.variant, "event": "model_fatal"},
        )  # fmt: skip
        if self._on_fatal is not None:
            self._on_fatal(reason)

    # -- internals -------------------------------------------------------------------------------------

    async def _probe_until_healthy(self) -> None:
        while self.failures >= self.max_failures and self.fatal is None:
            try:
                await self._probe()
            except Exception as exc:
                if is_fatal_device_error(exc):
                    self.model_failed(f"device error: {type(exc).__name__}: {exc}")
                    return
                self.failures += 1
                self._publish()
                self._retry_at = time.monotonic() + self.probe_interval_s
                logger.warning(
                    "variant %s: probe batch failed (%s: %s); next in %.1f s",
                    self.variant, type(exc).__name__, exc, self.probe_interval_s,
                )  # fmt: skip
                await asyncio.sleep(self.probe_interval_s)
            else:
                self.batch_succeeded()

    def _publish(self) -> None:
        """After every change of state: the gauges, and since when the model is not ready."""
        if self.ready:
            self.unready_since = None
        elif self.unready_since is None:
            self.unready_since = self._clock()
        self._up_gauge.set(1 if self.ready else 0)
        self._failures_gauge.set(self.failures)


class _LoopListener:
    """A ``ModelListener`` for another thread: each event is handed to the event loop, where health lives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, health: ModelHealth) -> None:
        self._loop = loop
        self._health = health

    def model_down(self, reason: str, retry_in_s: float) -> None:
        self._send(self._health.model_down, reason, retry_in_s)

    def model_up(self) -> None:
        self._send(self._health.model_up)

    def model_stalled(self, reason: str, retry_in_s: float) -> None:
        self._send(self._health.model_stalled, reason, retry_in_s)

    def model_failed(self, reason: str) -> None:
        self._send(self._health.model_failed, reason)

    def _send(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone, nobody to tell
            self._loop.call_soon_threadsafe(callback, *args)
