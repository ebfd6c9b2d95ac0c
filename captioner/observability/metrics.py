"""Prometheus series, as prometheus_client objects in a registry of their own (one per app, no globals).

Most series are updated where things happen; GPU health and drift scores are computed when Prometheus scrapes
(collectors), so they cost nothing between scrapes and are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from captioner.observability.gpu_metrics import GpuCollector

DriftScores = Callable[[], Mapping[str, "float | None"]]

# Latency buckets span a cache hit (sub-millisecond) to a slow CPU batch (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, gpu: GpuCollector | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "captioner_requests", "Caption requests answered, by HTTP status.", ["status"], registry=r
        )
        self.request_seconds = Histogram(
            "captioner_request_seconds",
            "Caption request latency, body read to response.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("captioner_errors", "Caption requests failed, by error code.", ["code"], registry=r)
        # The model-side series are labelled by A/B variant (each variant has its own model and batcher);
        # with no `models:` list the one variant is "default".
        variant = ["variant"]
        self.images = Counter(
            "captioner_images", "Images captioned by the model (cache hits excluded).", variant, registry=r
        )
        self.batch_size = Histogram(
            "captioner_batch_size", "Images per generate() call.", variant, buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_wait_seconds = Histogram(
            "captioner_batch_wait_seconds",
            "How long the first request of a batch waited for the batch to start.",
            variant,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("captioner_queue_depth", "Requests waiting for a batch.", variant, registry=r)
        self.queue_capacity = Gauge("captioner_queue_capacity", "batching.max_queue.", variant, registry=r)
        self.inference_seconds = Histogram(
            "captioner_inference_seconds",
            "Time of one batched generate() call.",
            variant,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # batching.mode: continuous (serving/continuous_batcher.py).
        self.decode_rows = Gauge(
            "captioner_decode_rows", "Sequences (beams) in the continuous decoder's running set.", variant, registry=r
        )
        self.decode_steps = Counter(
            "captioner_decode_steps", "Decoding steps of the continuous decoder's running set.", variant, registry=r
        )
        self.decode_first_token_seconds = Histogram(
            "captioner_decode_first_token_seconds",
            "Continuous decoding: from a request's arrival at the model to its first token.",
            variant,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.variant_requests = Counter(
            "captioner_variant_requests",
            "Successful caption requests, by the A/B variant that answered and whether it was a cache hit.",
            ["variant", "cached"],
            registry=r,
        )
        self.variant_weight = Gauge(
            "captioner_variant_weight", "Traffic weight of each A/B variant (0: rolled back).", variant, registry=r
        )
        self.caption_confidence = Histogram(
            "captioner_caption_confidence",
            "Confidence of the top caption, by variant: compare models on live traffic.",
            variant,
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.cascade = Counter(
            "captioner_cascade",
            "Computed answers behind a confidence cascade, by outcome: accepted (the first model's), escalated "
            "(the main model's) or first_unavailable (the first model gave none; the main model's).",
            ["outcome"],
            registry=r,
        )
        self.cache_hits = Counter("captioner_cache_hits", "Caption cache hits.", registry=r)
        self.cache_misses = Counter("captioner_cache_misses", "Caption cache misses.", registry=r)
        # Kept apart from captioner_cache_hits_total so that series stays unlabelled, as the contract names it.
        self.cache_level_hits = Counter(
            "captioner_cache_level_hits", "Caption cache hits, by level (local, redis).", ["level"], registry=r
        )
        self.cache_backend_errors = Counter(
            "captioner_cache_backend_errors",
            "Shared (Redis) cache calls that failed or were skipped while it was down; the request went on.",
            ["operation"],
            registry=r,
        )
        self.cache_backend_up = Gauge(
            "captioner_cache_backend_up", "1 while the shared (Redis) cache is in use, 0 while it is down.", registry=r
        )
        self.jobs = Counter(
            "captioner_jobs", "Async jobs finished by this replica, by outcome.", ["status"], registry=r
        )
        self.jobs_running = Gauge("captioner_jobs_running", "Async jobs this replica's worker is running.", registry=r)
        # The queue as a whole (with jobs.queue: redis, the shared stream: every replica reports the same values).
        self.job_queue_length = Gauge(
            "captioner_job_queue_length", "Async jobs in the queue: waiting for a worker or running.", registry=r
        )
        self.job_queue_pending = Gauge(
            "captioner_job_queue_pending", "Async jobs handed to a worker and not yet ended.", registry=r
        )
        self.job_queue_oldest_pending_seconds = Gauge(
            "captioner_job_queue_oldest_pending_seconds",
            "Age of the oldest job handed to a worker and not yet ended (0 when none).",
            registry=r,
        )
        self.job_retries = Counter(
            "captioner_job_retries",
            "Job deliveries after the first (the worker before died, stalled or failed transiently).",
            registry=r,
        )
        self.job_dead_letters = Counter(
            "captioner_job_dead_letters", "Jobs ended with an error after jobs.max_attempts deliveries.", registry=r
        )
        self.job_releases = Counter(
            "captioner_job_releases",
            "Jobs this replica's worker handed back to the queue unrun, without using an attempt, by reason "
            "(model_unavailable, model_lost: its batch died with the model process, overloaded, timeout).",
            ["reason"],
            registry=r,
        )
        self.job_claims_paused = Gauge(
            "captioner_job_claims_paused",
            "1 while this replica's worker claims no jobs (its model can't take work, or it just handed one back).",
            registry=r,
        )
        self.job_expired = Counter(
            "captioner_job_expired",
            "Relayed jobs answered 504 without running: their caller's deadline had passed.",
            registry=r,
        )
        self.job_callbacks = Counter(
            "captioner_job_callbacks",
            "Job callbacks, by outcome (delivered; failed: dead after every retry; refused by the URL policy).",
            ["outcome"],
            registry=r,
        )
        self.job_store_errors = Counter(
            "captioner_job_store_errors", "Job store (Redis) calls that failed.", ["operation"], registry=r
        )
        self.ready = Gauge(
            "captioner_ready", "1 once the model is loaded and warmed up, 0 before and while draining.", registry=r
        )
        self.model_info = Info("captioner_model", "The model each variant serves.", variant, registry=r)
        # Model health (serving/health.py): a broken model takes its replica out of /readyz.
        self.model_up = Gauge(
            "captioner_model_up",
            "1 while the variant's model takes work; 0 while its process is down, its batches keep failing, or "
            "the device failed.",
            variant,
            registry=r,
        )
        self.model_respawns = Counter(
            "captioner_model_respawns", "Model processes respawned after dying (model.worker: process).", variant,
            registry=r,
        )  # fmt: skip
        self.model_watchdog_kills = Counter(
            "captioner_model_watchdog_kills",
            "Model processes killed by the watchdog: a batch in flight for health.watchdog_s without an answer.",
            variant,
            registry=r,
        )
        self.model_consecutive_failures = Gauge(
            "captioner_model_consecutive_failures",
            "Batches failed in a row (0 after a success); at health.max_consecutive_failures the model is down.",
            variant,
            registry=r,
        )
        # Shared rate limits (guard/shared_limiter.py): decisions made without Redis.
        self.rate_limit_fallbacks = Counter(
            "captioner_rate_limit_fallbacks",
            "Rate-limit decisions made without the shared (Redis) buckets, by action: local (fail-open: this "
            "replica's own bucket decided) or refused (fail-closed: 503).",
            ["action"],
            registry=r,
        )
        self.rate_limit_backend_up = Gauge(
            "captioner_rate_limit_backend_up",
            "1 while the shared (Redis) rate-limit buckets answer, 0 while they are down.",
            registry=r,
        )
        # User ratings of captions (1..5, 5 best), per variant: the canary analysis reads the approval from here.
        self.feedback = Counter(
            "captioner_feedback", "Caption ratings received, by variant and rating.", ["variant", "rating"], registry=r
        )
        self.feedback_store_errors = Counter(
            "captioner_feedback_store_errors", "Feedback store (Redis) calls that failed.", ["operation"], registry=r
        )
        self.rollbacks = Counter(
            "captioner_rollbacks", "Canaries rolled back automatically, by variant and reason.",
            ["variant", "reason"], registry=r,
        )  # fmt: skip
        # The admission budget (guard/admission.py): requests accepted and not yet answered, async jobs included.
        # in_use / capacity is the replica's load whatever the work (fetching, decoding, queued, generating).
        self.admission_in_use = Gauge(
            "captioner_admission_in_use", "Requests and async jobs accepted and not yet answered.", registry=r
        )
        self.admission_capacity = Gauge(
            "captioner_admission_capacity", "limits.max_in_flight: the admission budget.", registry=r
        )
        self.admission_refused = Counter(
            "captioner_admission_refused",
            "Requests refused at the door: budget (503) or principal_jobs (429, too many running async jobs).",
            ["reason"],
            registry=r,
        )
        self.url_fetches_in_flight = Gauge(
            "captioner_url_fetches_in_flight",
            "Outbound HTTP calls running now: URL input, job callbacks, webhooks (url_input.max_concurrent_fetches).",
            registry=r,
        )
        # Per variant, what the canary analysis compares live: server-side failures and model-path latency.
        self.variant_errors = Counter(
            "captioner_variant_errors", "Caption requests a variant failed (5xx), by variant and error code.",
            ["variant", "code"], registry=r,
        )  # fmt: skip
        self.variant_request_seconds = Histogram(
            "captioner_variant_request_seconds",
            "Latency of caption requests a variant's model answered (cache hits excluded), by variant.",
            variant,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.registry_version = Gauge(
            "captioner_registry_version", "The registry version each alias is served from (0: none).", ["alias"],
            registry=r,
        )  # fmt: skip
        self.drift_webhooks = Counter(
            "captioner_drift_webhooks", "Drift webhook calls, by outcome (sent, failed, refused).", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.drift_psi_threshold = Gauge(
            "captioner_drift_psi_threshold", "drift.psi_alert: a PSI above it is drift worth a look.", registry=r
        )
        # Tenants (guard/usage.py): images per tenant by outcome (captioned, cached, rejected: a 4xx, failed: a 5xx,
        # quota_exceeded), labelled by the keys file's names, never by a key; and keys-file reloads.
        self.tenant_images = Counter(
            "captioner_tenant_images", "Images sent by each tenant, by outcome.", ["tenant", "outcome"], registry=r
        )
        self.keys_file_reloads = Counter(
            "captioner_keys_file_reloads", "Keys-file reads, by result (loaded, refused).", ["result"], registry=r
        )
        self.usage_backend_errors = Counter(
            "captioner_usage_backend_errors",
            "Usage counter (Redis) calls that failed; the quota was then decided by this replica's own counts.",
            registry=r,
        )
        # Content filtering (serving/content_filter.py): captions dropped for a blocked word.
        self.filtered_captions = Counter(
            "captioner_filtered_captions", "Captions dropped for a blocked word (content.blocked_words).", registry=r
        )
        self.filtered_fallbacks = Counter(
            "captioner_filtered_fallbacks",
            "Answers whose every caption was blocked, answered with content.fallback_caption instead.",
            registry=r,
        )
        self._drift = _DriftCollector()
        r.register(self._drift)
        self.gpu = gpu if gpu is not None else GpuCollector()
        r.register(self.gpu)

    def watch_gpu(self, device: str) -> bool:
        """Export GPU utilisation and memory for the torch ``device`` the model runs on (absent if no GPU)."""
        return self.gpu.watch(device)

    def watch_drift(self, scores: DriftScores, psi_alert: float) -> None:
        """Export ``captioner_drift_psi{feature}`` from ``scores()`` at each scrape; a None score is left out."""
        self._drift.scores = scores
        self.drift_psi_threshold.set(psi_alert)


class _DriftCollector(Collector):
    def __init__(self) -> None:
        self.scores: DriftScores | None = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.scores is None:
            return
        family = GaugeMetricFamily(
            "captioner_drift_psi",
            "Population Stability Index of each input/output feature, current window vs the reference.",
            labels=["feature"],
        )
        for feature, value in sorted(self.scores().items()):
            if value is not None:  # not enough observations yet: absent rather than a misleading 0
                family.add_metric([feature], value)
        yield family
