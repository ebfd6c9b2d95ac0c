"""The canary analysis, wired: every ``canary.interval_s`` compare the live ``canary`` variant with ``production``.

Both are measured over the same period: from the moment this watch first sees that pair of services (a new
canary, or a new production under it) on. A canary whose load failed (the pool's ``failed``: it serves nothing)
or whose model has been unable to serve since ``health.unready_since`` is judged on that alone (``decide``'s first
rule), so it is rolled back even with no traffic at all.

On a ``rollback`` verdict (``canary.decide``) the canary's weight goes to 0 at once (its accepted requests still
finish there), ``captioner_rollbacks_total{variant,reason}`` counts it, a warning is logged, and ``on_rollback``
runs: with a registry that clears the ``canary`` alias and records why (``registry_source.py``), which the other
replicas then follow. ``status`` is what ``GET /api/v1/variants`` shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from captioner.config import CanarySettings
from captioner.observability.metrics import Metrics
from captioner.registry.aliases import CANARY, PRODUCTION
from captioner.rollout.canary import ApprovalSource, Signals, Verdict, decide
from captioner.serving.live_stats import StatsSnapshot
from captioner.serving.variants import FailedVariant, Variant, VariantPool

logger = logging.getLogger("captioner.canary")

Canary: TypeAlias = Variant | FailedVariant  # a served canary, or one whose load failed
OnRollback = Callable[[Canary, Verdict], Awaitable[None]]


class CanaryWatch:
    def __init__(
        self,
        pool: VariantPool,
        settings: CanarySettings,
        metrics: Metrics,
        *,
        feedback: ApprovalSource | None = None,
        on_rollback: OnRollback | None = None,
        clock: Callable[[], float] = time.monotonic,  # the clock of the variants' health (unready_since)
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._settings = settings
        self._metrics = metrics
        self._feedback = feedback
        self._on_rollback = on_rollback
        # The (production, canary) services being compared, and the canary rolled back (its service, or its
        # failed load): weak references, so a retired model can be freed (and a new service can't be mistaken
        # for it by a recycled id()).
        self._pair: tuple[weakref.ref[Any], weakref.ref[Any]] | None = None
        self._baseline: dict[str, tuple[StatsSnapshot, tuple[int, float]]] = {}
        self._rolled_back: weakref.ref[Any] | None = None
        self._last_rollback: dict[str, Any] | None = None
        self.status: dict[str, Any] = {"state": "none"}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_s)
            try:
                await self.check()
            except Exception:  # the analysis must never take the server down; it tries again next time
                logger.exception("canary analysis failed")

    async def check(self) -> Verdict | None:
        router = self._pool.router
        production = router.get(PRODUCTION)
        canary: Canary | None = router.get(CANARY) or self._pool.failed.get(CANARY)
        if production is None or canary is None:
            self._pair = None
            self._set_status({"state": "none"})
            return None
        subject = canary.service if isinstance(canary, Variant) else canary
        if self._rolled_back is not None and self._rolled_back() is subject:
            return None  # status stays "rolled_back" until the canary is replaced or removed
        if canary.weight <= 0:
            self._set_status({"state": "paused", "detail": "the canary's weight is 0"})
            return None
        if isinstance(canary, FailedVariant):
            self._pair = None
            nothing = Signals(requests=0, error_ratio=None, p95_s=None, mean_confidence=None)
            signals = {PRODUCTION: nothing, CANARY: Signals(0, None, None, None, load_failed=canary.reason)}
        else:
            if self._pair is None or (self._pair[0](), self._pair[1]()) != (production.service, canary.service):
                self._pair = (weakref.ref(production.service), weakref.ref(canary.service))
                self._baseline = {
                    v.name: (v.service.stats.snapshot(), self._approval(v.name)) for v in (production, canary)
                }
            signals = {v.name: self._signals(v) for v in (production, canary)}
        verdict = decide(signals[PRODUCTION], signals[CANARY], self._settings)
        status = {
            "state": {"wait": "waiting", "healthy": "healthy", "rollback": "rolled_back"}[verdict.action],
            "reason": verdict.reason,
            "detail": verdict.detail,
            "checked_at": time.time(),
            "model": canary.settings.model.name,
            "production": signals[PRODUCTION].to_json(),
            "canary": signals[CANARY].to_json(),
        }
        if verdict.action == "rollback":
            self._last_rollback = {k: v for k, v in status.items() if k != "state"}
        self._set_status(status)
        if verdict.action == "rollback":
            await self._roll_back(canary, subject, verdict)
        return verdict

    def _set_status(self, status: dict[str, Any]) -> None:
        """The analysis' state; the last automatic rollback stays in it once the canary is gone."""
        self.status = {**status, "last_rollback": self._last_rollback} if self._last_rollback else status

    def _approval(self, variant: str) -> tuple[int, float]:
        if self._feedback is None:
            return (0, 0.0)
        count, ratio = self._feedback.approval(variant)
        return (count, count * ratio)  # (ratings, approving ratings): differences of these are exact

    def _signals(self, variant: Variant) -> Signals:
        base_stats, (base_count, base_approved) = self._baseline[variant.name]
        stats = variant.service.stats.snapshot().minus(base_stats)
        count, approved = self._approval(variant.name)
        feedback = count - base_count
        unready_since = variant.service.health.unready_since
        return Signals(
            requests=stats.requests,
            error_ratio=stats.error_ratio,
            p95_s=stats.p95_s,
            mean_confidence=stats.mean_confidence,
            feedback=feedback,
            approval=(approved - base_approved) / feedback if feedback > 0 else None,
            down_s=None if unready_since is None else max(0.0, self._clock() - unready_since),
        )

    async def _roll_back(self, canary: Canary, subject: object, verdict: Verdict) -> None:
        self._rolled_back = weakref.ref(subject)
        self._pool.set_weight(CANARY, 0.0)
        reason = verdict.reason or "unknown"
        self._metrics.rollbacks.labels(CANARY, reason).inc()
        logger.warning(
            "canary %s rolled back automatically (%s): %s", canary.settings.model.name, reason, verdict.detail,
            extra={"event": "canary_rollback", "variant": CANARY, "model": canary.settings.model.name,
                   "reason": reason, "detail": verdict.detail},
        )  # fmt: skip
        if self._on_rollback is not None:
            try:
                await self._on_rollback(canary, verdict)
            except Exception:
                logger.exception("recording the canary rollback failed; the canary stays at weight 0 here")
