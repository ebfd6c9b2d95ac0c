"""``create_app``: the Starlette app wired from the settings. Endpoints: ``routes.py``; start-up: ``lifespan.py``."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Scope

from captioner.config import Settings, check_role
from captioner.feedback.collector import build_feedback
from captioner.guard.admission import AdmissionBudget, AdmissionGate
from captioner.guard.api_guard import ApiGuard
from captioner.guard.api_keys import ApiKeys
from captioner.guard.job_quota import JobQuota
from captioner.guard.shared_limiter import SharedRateLimiter
from captioner.http import paths
from captioner.http.access_log import RequestObserver
from captioner.http.body import BodyDeadline
from captioner.http.exception_handlers import EXCEPTION_HANDLERS
from captioner.http.routes import routes
from captioner.http.web import render_index
from captioner.jobs.manager import JobManager
from captioner.model.loader import load_captioner
from captioner.model.protocol import Captioner
from captioner.observability.metrics import Metrics
from captioner.outbound.build import build_outbound
from captioner.rollout.drift_alert import DriftAlert
from captioner.rollout.drift_watch import DriftWatch
from captioner.rollout.registry_source import RegistrySource
from captioner.runtime.lifespan import lifespan
from captioner.runtime.state import AppState


def create_app(
    settings: Settings,
    captioner: Captioner | None = None,
    *,
    metrics: Metrics | None = None,
    on_fatal: Callable[[], None] | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    role: str = "all",
) -> Starlette:
    """The app. Without ``captioner`` the model named by ``settings.model`` is loaded at start-up (never for
    ``role="api"``, which only accepts jobs and answers; ``"worker"`` serves only health and metrics)."""
    check_role(role, settings)
    metrics = metrics or Metrics()
    outbound = build_outbound(settings, metrics)
    admission = AdmissionBudget.from_settings(settings, metrics)
    state = AppState(
        settings=settings,
        metrics=metrics,
        keys=ApiKeys.from_settings(settings.auth),  # a bad entry stops start-up here, naming its position
        outbound=outbound,
        url_fetcher=outbound.fetcher,
        jobs=JobManager.from_settings(settings, metrics),
        drift=DriftWatch.from_settings(settings.drift, metrics),  # a bad reference file stops start-up here
        feedback=build_feedback(settings, metrics),
        page=render_index(settings),
        limiter=SharedRateLimiter.from_settings(settings, metrics),
        admission=admission,
        job_quota=JobQuota.from_settings(settings, admission),
        role=role,
        callbacks=outbound.callbacks,
        registry=RegistrySource(settings, metrics) if settings.registry.path and role != "api" else None,
    )
    if outbound.webhook is not None:
        state.webhook = DriftAlert(state.drift, outbound.webhook, metrics)

    def load_model(variant_settings: Settings) -> Captioner:
        return captioner if captioner is not None else load_captioner(variant_settings)

    app = Starlette(
        routes=routes(role),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(RequestObserver, metrics=metrics),  # outermost: sees every answer, 401/429/503 too
            Middleware(BodyDeadline, timeout_s=settings.limits.body_timeout_s),  # 408 for a body that trickles
            Middleware(
                ApiGuard,
                keys=state.keys,
                limiter=state.limiter,
                protects=paths.is_protected,
                admin_keys=ApiKeys.admins(settings.auth),
            ),
            # After the keys (a stranger takes no ticket), before the body is read (a refusal costs nothing).
            Middleware(AdmissionGate, budget=state.admission, admits=_takes_work),
        ],
        lifespan=lifespan(state, load_model, on_fatal, reload_settings),
    )
    app.state.captioner = state
    return app


def _takes_work(scope: Scope) -> bool:
    return (scope.get("method"), scope.get("path")) in paths.ADMITTED
