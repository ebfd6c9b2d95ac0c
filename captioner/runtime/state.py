"""``Runtime``: the running server's components and its lifecycle (loading, ready, draining, failed).

Built once by ``runtime/components.py`` from the settings, started and stopped by ``runtime/lifespan.py``; the
HTTP layer reads it through ``runtime_of(request)``. It is also the ``ServingStatus`` the caption use case
consults: its variant pool, and whether new work is taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from captioner.config import Settings, to_dict
from captioner.errors import Overloaded
from captioner.feedback.collector import Feedback
from captioner.guard.admission import AdmissionBudget
from captioner.guard.job_quota import JobQuota
from captioner.guard.keys_watch import KeysFileWatch
from captioner.guard.shared_limiter import SharedRateLimiter
from captioner.guard.tenants import TenantKeys
from captioner.guard.usage import TenantUsage
from captioner.jobs.manager import JobManager
from captioner.observability.metrics import Metrics
from captioner.outbound.build import Outbound
from captioner.outbound.callbacks import CallbackSender
from captioner.outbound.url_fetch import UrlFetcher
from captioner.rollout.drift_alert import DriftAlert
from captioner.rollout.drift_watch import DriftWatch
from captioner.rollout.registry_source import RegistrySource
from captioner.serving.use_case import CaptionUseCase

if TYPE_CHECKING:  # the model side is imported only where a model is served (never on an api replica)
    from captioner.rollout.canary_watch import CanaryWatch
    from captioner.serving.variants import VariantPool

logger = logging.getLogger("captioner.app")

ROLE_ALL, ROLE_API, ROLE_WORKER = "all", "api", "worker"


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    role: str  # serve --role: all (accept and caption), api (accept, no model), worker (caption the queue)
    keys: TenantKeys  # the keys in force, by tenant (swapped whole when the keys file changes)
    keys_watch: KeysFileWatch | None  # auth.keys_file set: re-reads it when it changes, and on SIGHUP
    usage: TenantUsage  # per-tenant daily quota and usage counters
    limiter: SharedRateLimiter
    admission: AdmissionBudget  # requests and running jobs accepted and not yet answered (503 past it)
    job_quota: JobQuota  # async jobs this replica accepted that have not ended: per caller, and their bytes
    jobs: JobManager
    drift: DriftWatch
    feedback: Feedback
    outbound: Outbound  # every outbound HTTP call: one client, one cap, one SSRF policy
    url_fetcher: UrlFetcher
    callbacks: CallbackSender | None = None  # None without jobs.callback_secret: callback_url is refused
    drift_alert: DriftAlert | None = None  # drift.webhook_url set: one webhook per drift episode
    registry: RegistrySource | None = None  # registry.path set: the variants are its aliases
    use_case: CaptionUseCase = field(init=False)
    pool: VariantPool | None = None  # the variants, once loaded (never on an api replica)
    canary: CanaryWatch | None = None  # made once the variants are up
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

    @property
    def serves_model(self) -> bool:
        return self.role != ROLE_API

    def refusal(self) -> Overloaded | None:
        """Why new work is refused now (503), or None: the caption use case asks before reading a body."""
        if self.draining:
            return Overloaded("the server is shutting down", retry_after_s=1)
        if not self.ready:
            return Overloaded("the model is still loading", retry_after_s=5)
        return None

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

    def start_draining(self) -> None:
        """Called on SIGTERM, before anything else: stop looking ready, refuse new work, and stop holding
        queued requests back for their batch deadline (no new request will join them). The drain budget,
        ``server.drain_timeout_s``, starts now, once, for everything accepted: requests, batches and jobs."""
        if self.drain_deadline is None:
            self.drain_deadline = self.clock() + self.settings.server.drain_timeout_s
        self.draining = True
        self.ready = False
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


def runtime_of(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.captioner
    return runtime
