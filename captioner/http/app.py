"""``create_app``: the Starlette app over a replica's runtime. Endpoints: ``routes.py``; components, start-up and
drain: ``captioner/runtime/``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Scope

from captioner.config import Settings
from captioner.guard.admission import AdmissionGate
from captioner.guard.api_guard import ApiGuard
from captioner.http import paths
from captioner.http.access_log import RequestObserver
from captioner.http.body import BodyDeadline
from captioner.http.exception_handlers import EXCEPTION_HANDLERS
from captioner.http.routes import routes
from captioner.http.web import render_index
from captioner.observability.metrics import Metrics
from captioner.runtime.components import build_runtime
from captioner.runtime.lifespan import lifespan

if TYPE_CHECKING:
    from captioner.model.protocol import Captioner


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
    runtime = build_runtime(settings, metrics or Metrics(), role)

    def load_model(variant_settings: Settings) -> Captioner:
        if captioner is not None:
            return captioner
        from captioner.model.loader import load_captioner  # the model side: never imported on an api replica

        return load_captioner(variant_settings)

    app = Starlette(
        routes=routes(role),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(RequestObserver, metrics=runtime.metrics),  # outermost: sees every answer, 401/429/503 too
            Middleware(BodyDeadline, timeout_s=settings.limits.body_timeout_s),  # 408 for a body that trickles
            Middleware(
                ApiGuard,
                keys=runtime.keys,
                limiter=runtime.limiter,
                protects=paths.is_protected,
                scope_of=paths.scope_of,  # 403 for a tenant without the endpoint's scope
            ),
            # After the keys (a stranger takes no ticket), before the body is read (a refusal costs nothing).
            Middleware(AdmissionGate, budget=runtime.admission, admits=_takes_work),
        ],
        lifespan=lifespan(runtime, load_model, on_fatal, reload_settings),
    )
    app.state.captioner = runtime
    app.state.page = render_index(settings)
    return app


def _takes_work(scope: Scope) -> bool:
    return (scope.get("method"), scope.get("path")) in paths.ADMITTED
