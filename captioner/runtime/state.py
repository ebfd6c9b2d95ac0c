"""``AppState``: what the endpoints share, built once by ``create_app`` and read through ``app_state(request)``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection

from captioner.config import Settings, to_dict
from captioner.feedback.collector import Feedback
from captioner.guard.admission import AdmissionBudget
from captioner.guard.api_keys import ApiKeys
from captioner.guard.job_quota import JobQuota
from captioner.guard.shared_limiter import SharedRateLimiter
from captioner.jobs.manager import JobManager
from captioner.observability.metrics import Metrics
from captioner.outbound.build import Outbound
from captioner.outbound.callbacks import CallbackSender
from captioner.outbound.url_fetch import UrlFetcher
from captioner.rollout.canary_watch import CanaryWatch
from captioner.rollout.drift_alert import DriftAlert
from captioner.rollout.drift_watch import DriftWatch
from captioner.rollout.registry_source import RegistrySource
from captioner.serving.service import CaptionService
from captioner.serving.variants import VariantPool

logger = logging.getLogger("captioner.app")


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    keys: ApiKeys
    outbound: Outbound  # owns the one outbound HTTP client: closed at shutdown
    url_fetcher: UrlFetcher
    jobs: JobManager
    drift: DriftWatch
    feedback: Feedback
    page: str  # the web page, rendered once from the settings
    limiter: SharedRateLimiter
    admission: AdmissionBudget  # requests and running jobs accepted and not yet answered (503 past it)
    job_quota: JobQuota  # async jobs this replica accepted that have not ended: per caller, and their bytes
    role: str = "all"  # serve --role: all (accept and caption), api (accept, no model), worker (caption the queue)
    callbacks: CallbackSender | None = None  # None without jobs.callback_secret: callback_url is refused
    pool: VariantPool | None = None
    registry: RegistrySource | None = None  # registry.path set: the variants are its aliases
    canary: CanaryWatch | None = None  # made once the variants are up
    webhook: DriftAlert | None = None  # drift.webhook_url set
    loop: asyncio.AbstractEventLoop | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    fatal_error: str | None = None  # a model failure this process can't recover from (it is on its way out)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    drain_deadline: float | None = None  # on ``clock``, set by the first start_draining
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        # Computed at each scrape, so it can never disagree with /readyz.
        self.metrics.ready.set_function(lambda: 0.0 if self.not_ready_reason() else 1.0)

    def not_ready_reason(self) -> str | None:
        """Why /readyz says 503 (loading, draining, a model down or failing, a fatal error); None when ready."""
        if self.fatal_error is not None:
            return "failed: " + self.fatal_error
        if self.load_error is not None:
            return "failed: " + self.load_error
        if self.draining:
            return "draining"
        if not self.ready:
            return "loading"
        problems = self.pool.health_problems() if self.pool is not None else []  # an api replica has no model
        return "; ".join(problems) if problems else None

    @property
    def service(self) -> CaptionService | None:
        """A live variant's service, for what every variant does alike (admission, queue estimates)."""
        return self.pool.router.any_service() if self.pool is not None else None

    async def reload(self, new: Settings) -> None:
        """SIGHUP: apply the new `models:` list (weights, added or removed variants) without dropping requests.

        Only `models` changes. Other sections are read at start-up only (they size thread pools, queues and
        sockets): a change to them is logged, not applied. That includes `model`: the default variant keeps its
        running model, and an entry's unset keys come from the running `model` section, not the new file's.
        """
        if self.pool is None:
            logger.warning("reload ignored: the model is still loading")
            return
        running = to_dict(self.settings)
        ignored = [k for k, v in to_dict(new).items() if k != "models" and v != running[k]]
        if ignored:
            logger.warning("reload applies `models` only; restart to change: %s", ", ".join(ignored))
        wanted = self.registry.resolve(new) if self.registry is not None else new
        applied = self.settings.with_models_of(wanted)
        await self.pool.reload(applied)
        self.settings = applied

    def set_ready(self, ready: bool) -> None:
        self.ready = ready

    def start_draining(self) -> None:
        """Called on SIGTERM, before anything else: stop looking ready, refuse new work, and stop holding
        queued requests back for their batch deadline (no new request will join them). The drain budget,
        ``server.drain_timeout_s``, starts now, once, for everything accepted: requests, batches and jobs."""
        if self.drain_deadline is None:
            self.drain_deadline = self.clock() + self.settings.server.drain_timeout_s
        self.draining = True
        self.set_ready(False)
        if self.loop is not None:
            # A signal handler may run between any two bytecodes of the loop: hand the loop the work.
            self.loop.call_soon_threadsafe(self.jobs.stop_claiming)
            if self.pool is not None:
                self.loop.call_soon_threadsafe(self.pool.expedite)

    def drain_left_s(self) -> float:
        """Seconds left of the drain budget (all of it before a drain started)."""
        if self.drain_deadline is None:
            return self.settings.server.drain_timeout_s
        return max(0.0, self.drain_deadline - self.clock())

    def spawn(self, coroutine: Any, name: str) -> None:
        """Run ``coroutine`` in the background, holding a reference so it isn't garbage-collected mid-way."""
        task = asyncio.create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def app_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.app.state.captioner
    return state
