"""The canary analysis, wired: every ``canary.interval_s`` compare the live ``canary`` variant with ``production``.

Both are measured over the same period: from the moment this watch first sees that pair of services (a new
canary, or a new production under it) on. A canary whose load failed (the pool's ``failed``: it serves nothing)
or whose model has been unable to serve since ``health.unready_since`` is judged on that alone (``decide``'s first
rule), so it is rolled back even with no traffic at all.

On a ``rollback`` verdict (``canary.decide``) the canary's weight goes to 0 at once (its accepted requests still
finish there), ``captioner_rollbacks_total{variant,reason}`` counts it, a warning is logged, and ``on_rollback``
runs: with a registry that clears the ``canary`` alias and records why (``registry_source.py``), which the other
replicas then follow. ``status`` is what ``GET /api/v1/variants`` shows.

With a ``FleetCanary`` (canary_fleet.py: the replicas share a Redis) the figures judged are the fleet's, summed
over every replica, and the first replica to decide a rollback leads it while the others follow.
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
from captioner.rollout.canary_fleet import FleetCanary, FleetVerdict, Window, pair_id
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
        fleet: FleetCanary | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._fleet = fleet
        self._fleet_down = False  # the shared table failed last time (warned once per outage)
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
        followed: FleetVerdict | None = None  # the fleet's verdict, decided by another replica
        fleet: dict[str, Any] = {}
        if isinstance(canary, FailedVariant):
            self._pair = None
            nothing = Signals(requests=0, error_ratio=None, p95_s=None, mean_confidence=None)
            signals = {PRODUCTION: nothing, CANARY: Signals(0, None, None, None, load_failed=canary.reason)}
            verdict = decide(signals[PRODUCTION], signals[CANARY], self._settings)
        else:
            if self._pair is None or (self._pair[0](), self._pair[1]()) != (production.service, canary.service):
                self._pair = (weakref.ref(production.service), weakref.ref(canary.service))
                self._baseline = {
                    v.name: (v.service.stats.snapshot(), self._approval(v.name)) for v in (production, canary)
                }
            windows = {v.name: self._window(v) for v in (production, canary)}
            pair = pair_id(production, canary)
            if self._fleet is not None:
                followed, windows, replicas = await self._fleet_view(pair, windows)
                fleet = {"replicas": replicas}
            signals = {PRODUCTION: windows[PRODUCTION].signals(), CANARY: windows[CANARY].signals(self._down_s(canary))}
            verdict = followed.verdict if followed else decide(signals[PRODUCTION], signals[CANARY], self._settings)
            if verdict.action == "rollback" and followed is None:
                followed = await self._settle(pair, verdict)
                verdict = followed.verdict if followed else verdict
        status = {
            "state": {"wait": "waiting", "healthy": "healthy", "rollback": "rolled_back"}[verdict.action],
            "reason": verdict.reason,
            "detail": verdict.detail,
            "checked_at": time.time(),
            "model": canary.settings.model.name,
            "production": signals[PRODUCTION].to_json(),
            "canary": signals[CANARY].to_json(),
            **fleet,
            **({"decided_by": "another replica"} if followed else {}),
        }
        if verdict.action == "rollback":
            self._last_rollback = {k: v for k, v in status.items() if k != "state"}
        self._set_status(status)
        if verdict.action == "rollback":
            await self._roll_back(canary, subject, verdict, lead=followed is None)
        return verdict

    async def aclose(self) -> None:
        if self._fleet is not None:
            await self._fleet.aclose()

    async def _fleet_view(
        self, pair: str, windows: dict[str, Window]
    ) -> tuple[FleetVerdict | None, dict[str, Window], int]:
        """The fleet's rollback of this pair if a replica decided one; else the fleet's figures (this replica's
        alone, when the shared table can't be reached)."""
        assert self._fleet is not None
        try:
            decided = await self._fleet.decided(pair)
            if decided is not None and decided.verdict.action == "rollback":
                return decided, windows, 1
            summed, replicas = await self._fleet.gather(pair, windows)
        except Exception:
            self._fleet_unreachable()
            return None, windows, 1
        self._fleet_down = False
        return None, summed, replicas

    async def _settle(self, pair: str, verdict: Verdict) -> FleetVerdict | None:
        """Record this replica's rollback as the fleet's; the verdict of another replica that recorded one first
        (follow it), or None (lead: ours is the fleet's, or there is no fleet to tell)."""
        if self._fleet is None:
            return None
        try:
            settled = await self._fleet.settle(pair, verdict)
        except Exception:
            self._fleet_unreachable()
            return None
        return None if settled.by == self._fleet.replica else settled

    def _fleet_unreachable(self) -> None:
        if not self._fleet_down:
            self._fleet_down = True
            logger.warning("canary analysis: the fleet's figures are unreachable (Redis); judging this replica's")

    def _set_status(self, status: dict[str, Any]) -> None:
        """The analysis' state; the last automatic rollback stays in it once the canary is gone."""
        self.status = {**status, "last_rollback": self._last_rollback} if self._last_rollback else status

    def _approval(self, variant: str) -> tuple[int, float]:
        if self._feedback is None:
            return (0, 0.0)
        count, ratio = self._feedback.approval(variant)
        return (count, count * ratio)  # (ratings, approving ratings): differences of these are exact

    def _window(self, variant: Variant) -> Window:
        """This replica's figures for ``variant`` since the pair began."""
        base_stats, (base_count, base_approved) = self._baseline[variant.name]
        count, approved = self._approval(variant.name)
        stats = variant.service.stats.snapshot().minus(base_stats)
        return Window(stats, count - base_count, approved - base_approved)

    def _down_s(self, variant: Variant) -> float | None:
        unready_since = variant.service.health.unready_since
        return None if unready_since is None else max(0.0, self._clock() - unready_since)

    async def _roll_back(self, canary: Canary, subject: object, verdict: Verdict, *, lead: bool = True) -> None:
        """The canary to weight 0 here; the leader (this replica decided) also counts, logs and records it."""
        self._rolled_back = weakref.ref(subject)
        self._pool.set_weight(CANARY, 0.0)
        if not lead:
            logger.warning(
                "canary %s rolled back here, following the fleet's verdict (%s)", canary.settings.model.name,
                verdict.reason, extra={"event": "canary_rollback_followed", "variant": CANARY,
                                       "reason": verdict.reason},
            )  # fmt: skip
            return
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
