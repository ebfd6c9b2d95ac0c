"""Prometheus series, as prometheus_client objects in a registry of their own (one per app, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets span a cache hit (sub-millisecond) to a slow CPU batch (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self.images = Counter("captioner_images", "Images captioned by the model (cache hits excluded).", registry=r)
        self.batch_size = Histogram(
            "captioner_batch_size", "Images per generate() call.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_wait_seconds = Histogram(
            "captioner_batch_wait_seconds",
            "How long the first request of a batch waited for the batch to start.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("captioner_queue_depth", "Requests waiting for a batch.", registry=r)
        self.queue_capacity = Gauge("captioner_queue_capacity", "batching.max_queue.", registry=r)
        self.inference_seconds = Histogram(
            "captioner_inference_seconds", "Time of one batched generate() call.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.cache_hits = Counter("captioner_cache_hits", "Caption cache hits.", registry=r)
        self.cache_misses = Counter("captioner_cache_misses", "Caption cache misses.", registry=r)
        self.ready = Gauge(
            "captioner_ready", "1 once the model is loaded and warmed up, 0 before and while draining.", registry=r
        )
        self.model_info = Info("captioner_model", "The model being served.", registry=r)
