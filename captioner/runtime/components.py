"""The composition root: every component of a replica, built once from the validated settings.

``build_runtime`` is the one place that knows which concrete pieces a role gets; the HTTP layer
(``http/app.py``), the lifespan and ``server.py`` only use what it returns. What a replica without a model
(``--role api``) never builds, it never imports: that replica runs without torch.
"""

from __future__ import annotations

from captioner.config import Settings, check_role
from captioner.feedback.collector import build_feedback
from captioner.guard.admission import AdmissionBudget
from captioner.guard.job_quota import JobQuota
from captioner.guard.keys_watch import KeysFileWatch, build_keys
from captioner.guard.shared_limiter import SharedRateLimiter
from captioner.guard.usage import TenantUsage
from captioner.jobs.manager import JobManager
from captioner.jobs.relay import JobRelay
from captioner.observability.metrics import Metrics
from captioner.outbound.build import build_outbound
from captioner.rollout.canary_fleet import FleetCanary
from captioner.rollout.drift_alert import FLEET_EPISODE_KEY, DriftAlert
from captioner.rollout.drift_watch import DriftWatch
from captioner.rollout.registry_source import RegistrySource
from captioner.runtime.state import ROLE_API, Runtime
from captioner.serving.content_filter import ContentFilter, Filtered
from captioner.serving.privacy import CachePrivacy
from captioner.serving.use_case import CaptionUseCase
from captioner.shared_state.fleet_episode import RedisFleetEpisode
from captioner.shared_state.redis_client import RedisClient
from captioner.shared_state.redis_table import RedisTable


def build_runtime(settings: Settings, metrics: Metrics, role: str) -> Runtime:
    """Every component of a replica of ``role``; a bad setting that only shows here stops start-up, named."""
    check_role(role, settings)
    outbound = build_outbound(settings, metrics)
    admission = AdmissionBudget.from_settings(settings, metrics)
    jobs = JobManager.from_settings(settings, metrics)
    keys_watch = _keys_watch(settings, metrics)
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        role=role,
        # A bad entry, or keys file, stops start-up here, named.
        keys=keys_watch.keys if keys_watch is not None else build_keys(settings.auth),
        keys_watch=keys_watch,
        usage=TenantUsage.from_settings(settings, metrics),
        limiter=SharedRateLimiter.from_settings(settings, metrics),
        admission=admission,
        job_quota=JobQuota.from_settings(settings, admission),
        jobs=jobs,
        drift=DriftWatch.from_settings(settings.drift, metrics),  # a bad reference file stops start-up here
        feedback=build_feedback(settings, metrics),
        outbound=outbound,
        url_fetcher=outbound.fetcher,
        callbacks=outbound.callbacks,
        registry=RegistrySource(settings, metrics) if settings.registry.path and role != ROLE_API else None,
    )
    if outbound.webhook is not None:
        runtime.drift_alert = DriftAlert(runtime.drift, outbound.webhook, metrics, fleet=_drift_episode(settings))
    # An api replica has no model: its captions are made by the workers, through the job queue.
    relay = JobRelay(jobs) if role == ROLE_API else None

    def filtered(result: Filtered) -> None:
        metrics.filtered_captions.inc(result.dropped)
        if result.fallback:
            metrics.filtered_fallbacks.inc()

    runtime.use_case = CaptionUseCase(
        runtime,
        outbound.fetcher.fetch,
        relay,
        privacy=CachePrivacy.from_settings(settings),
        content=ContentFilter.from_settings(settings.content, filtered),  # an unreadable word file stops start-up
    )
    return runtime


def _keys_watch(settings: Settings, metrics: Metrics) -> KeysFileWatch | None:
    if not settings.auth.keys_file:
        return None
    return KeysFileWatch(
        settings.auth, on_reload=lambda ok: metrics.keys_file_reloads.labels("loaded" if ok else "refused").inc()
    )


# How long the fleet's drift episode outlives the last replica that still alerts: longer than a webhook call
# with its retries, and than a replica's recheck interval (5 s), so that an episode never lapses mid-way.
DRIFT_EPISODE_TTL_S = 60.0


def _drift_episode(settings: Settings) -> RedisFleetEpisode | None:
    """The drift alert episode shared through the replicas' Redis, if they have one (one webhook call per
    episode for the fleet); None: each replica calls for its own episodes."""
    url = settings.jobs.redis_url or settings.cache.redis_url
    if not url:
        return None
    redis = RedisClient(url, name="drift", timeout_s=settings.cache.redis_timeout_s)
    return RedisFleetEpisode(redis, FLEET_EPISODE_KEY, ttl_s=DRIFT_EPISODE_TTL_S)


def canary_fleet(settings: Settings) -> FleetCanary | None:
    """The canary analysis' shared figures and verdict, on the replicas' Redis if they have one; None: each replica
    judges its own traffic."""
    url = settings.jobs.redis_url or settings.cache.redis_url
    if not url:
        return None
    redis = RedisClient(url, name="canary", timeout_s=settings.cache.redis_timeout_s)
    # Rows outlive a quiet spell of the whole fleet (a deploy, say): a day, or many intervals if that is longer.
    return FleetCanary(RedisTable(redis), ttl_s=max(86400.0, 100 * settings.canary.interval_s))


def fetch_weights(runtime: Runtime) -> None:
    """Download what the replica will serve and doesn't have yet (``model.path`` empty: ``model.name`` from the
    hub), before the port is bound; ``WeightsUnavailable`` says what to do when it can't. The registry's versions
    are on disk by construction; its fallback (the ``model`` section) may not be."""
    if not runtime.serves_model:
        return
    from captioner.model.weights import ensure_weights

    registry = runtime.registry
    if registry is not None:
        registry.refresh()
    variants = registry.resolve(runtime.settings) if registry is not None else runtime.settings
    for _, _, variant in variants.variants():
        ensure_weights(variant.model)
