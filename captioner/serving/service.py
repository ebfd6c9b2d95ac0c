"""The data path after HTTP parsing: hash -> cache (single-flight) -> preprocess -> batcher -> model.

``CaptionService`` owns the pieces with a lifetime (thread pools, batcher, cache) and knows nothing of HTTP.
The event loop only schedules: hashing of big bodies, decoding and the model all run on threads.
Preprocessing is bounded: at most twice ``server.preprocess_workers`` decodes are handed to the thread pool at a
time (its own queue is unbounded); the rest wait on the event loop, holding only their bytes, and a request
whose deadline passes while it waits is answered 504 without being decoded at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import orjson

from captioner.config import DEFAULT_VARIANT, Settings
from captioner.errors import CaptionerError, ModelLost, ModelUnavailable, Overloaded, RequestTimeout
from captioner.model.decode_loop import running_set_rows
from captioner.model.device_errors import is_fatal_device_error
from captioner.model.preprocessing import ImageInfo, PreparedImage
from captioner.model.process_worker import ModelProcessDied
from captioner.model.protocol import Caption, Captioner, CaptionJob, DecodeSink, StepDecoding
from captioner.observability.metrics import Metrics
from captioner.serving.batcher import Batcher, BatchInfo
from captioner.serving.cache import CaptionCache, Lookup, cache_key
from captioner.serving.cascade import ACCEPTED, FIRST_UNAVAILABLE, OUTCOMES, answered, decide, key_part
from captioner.serving.continuous_batcher import ContinuousBatcher
from captioner.serving.decode_counters import DecodeCounters, decode_error
from captioner.serving.hashing import INLINE_HASH_BYTES, sha256_hex, sha256_off_loop
from captioner.serving.health import ModelHealth, OnFatal
from captioner.serving.live_stats import VariantStats
from captioner.serving.outcome import CaptionOutcome
from captioner.shared_state.redis_cache import RedisCacheLevel
from captioner.shared_state.redis_client import RedisClient

logger = logging.getLogger("captioner.service")


class ImageObserver(Protocol):
    """What watches the images the model captions and its answers: the drift monitor (rollout/drift_watch.py)."""

    def observe_input(self, prepared: PreparedImage, n_bytes: int) -> None:
        """On the preprocessing thread that decoded the image; must not raise."""

    def observe_output(self, captions: Sequence[Caption]) -> None:
        """With the model's captions for one image, best first; must not raise."""


class Unobserved:
    """No observer: nothing is watched."""

    def observe_input(self, prepared: PreparedImage, n_bytes: int) -> None:
        return None

    def observe_output(self, captions: Sequence[Caption]) -> None:
        return None


@dataclass(frozen=True)
class _Computed:
    captions: list[Caption]
    info: ImageInfo | None  # None when read back from the shared cache
    batch_size: int | None = None
    model: str = ""  # the model that produced the captions, when not the variant's own (a cascade's first)
    cascade: str | None = None  # behind a cascade: "accepted" or "escalated" (serving/cascade.py)


@dataclass(frozen=True)
class _Inferred:
    captions: list[Caption]
    batch_size: int  # for the request log: how many images shared this one's generate() call


def _encode(value: _Computed) -> bytes:
    body: dict[str, Any] = {"captions": [[c.text, c.confidence] for c in value.captions]}
    if value.model:
        body["model"] = value.model
    if value.cascade is not None:
        body["cascade"] = value.cascade
    return orjson.dumps(body)


def _decode(raw: bytes) -> _Computed:
    body = orjson.loads(raw)
    captions = [Caption(str(text), float(confidence)) for text, confidence in body["captions"]]
    if not captions:
        raise ValueError("no captions")
    cascade = body.get("cascade")
    return _Computed(
        captions, info=None, model=str(body.get("model", "")), cascade=None if cascade is None else str(cascade)
    )


class _VariantSeries:
    """This variant's labelled children, looked up once: ``.labels()`` costs more than the update itself."""

    def __init__(self, metrics: Metrics, variant: str) -> None:
        self.cache_hits = metrics.cache_hits
        self.cache_misses = metrics.cache_misses
        self.served_cached = metrics.variant_requests.labels(variant, "true")
        self.served_computed = metrics.variant_requests.labels(variant, "false")
        self.confidence = metrics.caption_confidence.labels(variant)
        self.inference_seconds = metrics.inference_seconds.labels(variant)
        self.images = metrics.images.labels(variant)
        self.batch_size = metrics.batch_size.labels(variant)
        self.batch_wait_seconds = metrics.batch_wait_seconds.labels(variant)
        self.request_seconds = metrics.variant_request_seconds.labels(variant)
        self._errors = metrics.variant_errors
        self._variant = variant
        self._level_hits = metrics.cache_level_hits
        self._level_children: dict[str, Any] = {}
        self.cascade = {outcome: metrics.cascade.labels(outcome) for outcome in OUTCOMES}

    def errors(self, code: str) -> Any:
        return self._errors.labels(self._variant, code)

    def level_hits(self, level: str) -> Any:
        child = self._level_children.get(level)
        if child is None:
            child = self._level_children[level] = self._level_hits.labels(level)
        return child


class CaptionService:
    def __init__(
        self,
        settings: Settings,
        captioner: Captioner,
        metrics: Metrics,
        *,
        observer: ImageObserver | None = None,
        variant: str = DEFAULT_VARIANT,
        on_fatal: OnFatal | None = None,
        first: CaptionService | None = None,
    ) -> None:
        """``first``: the cascade's first model (serving/cascade.py), which screens every cache miss; None: no
        cascade. It is shared by the variants and owned by their pool: this service never starts or closes it."""
        self.settings = settings
        self.variant = variant
        self._series = _VariantSeries(metrics, variant)
        self._settings_keys: dict[int, str] = {}
        self.captioner = captioner
        self.metrics = metrics
        self.observer = observer if observer is not None else Unobserved()
        self.stats = VariantStats()  # live signals for the canary analysis (rollout/canary.py)
        gen = settings.generation
        self._model_id: dict[str, Any] = {
            "variant": variant,
            "name": captioner.name,
            "revision": captioner.revision,
            "prompt": settings.model.prompt,
            # float16 and int8 (model.quantize) captions differ from float32 ones: never serve one for another.
            "dtype": captioner.dtype,
        }
        self._generation = {k: v for k, v in asdict(gen).items() if k not in ("num_captions", "max_num_captions")}
        self._first = first
        self._threshold = settings.cascade.threshold
        # Requests in caption() now: close() lets them reach the batcher (and finish) before it stops taking work,
        # so one routed here just before a switch retired this variant is answered, not refused.
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        if first is not None:
            self._model_id["cascade"] = key_part(first.model_identity, self._threshold)
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-model")
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.server.preprocess_workers, thread_name_prefix="captioner-preprocess"
        )
        self._preprocess_slots = asyncio.Semaphore(2 * settings.server.preprocess_workers)
        batching = settings.batching
        self.batcher: Batcher[CaptionJob, _Inferred] | ContinuousBatcher
        if batching.mode == "continuous":
            self.batcher = ContinuousBatcher(
                self._start_decoding,
                rows_for=lambda job: max(gen.num_beams, job.num_captions),
                max_rows=running_set_rows(batching.max_batch_size, gen.num_beams),
                max_queue=batching.max_queue,
                request_timeout_s=batching.request_timeout_s,
                observer=DecodeCounters(metrics, variant, self),
                map_error=decode_error(settings.health.respawn_backoff_s),
            )
        else:
            self.batcher = Batcher(
                self._run_batch,
                max_batch_size=batching.max_batch_size,
                max_wait_s=batching.max_wait_ms / 1000,
                max_queue=batching.max_queue,
                request_timeout_s=batching.request_timeout_s,
                on_batch=self._observe_batch,
            )
        # Read by /readyz (through the variant pool); refuses model work while the model can't take it.
        self.health = ModelHealth(variant, metrics, settings.health, probe=self._probe, on_fatal=on_fatal)
        self._device_failed = False  # set on the model thread by a fatal device error (see _timed_batch)
        self._shared_cache = _shared_cache(settings, metrics)
        self.cache: CaptionCache[_Computed] = CaptionCache(
            max_entries=settings.cache.max_entries, ttl_s=settings.cache.ttl_s, second_level=self._shared_cache
        )
        metrics.queue_depth.labels(variant).set_function(lambda: self.batcher.queue_depth)
        metrics.queue_capacity.labels(variant).set(batching.max_queue)
        metrics.watch_gpu(captioner.device)

    def start(self) -> None:
        self.batcher.start()
        self.health.watch(self.captioner)

    async def warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._model_pool, self.captioner.warm_up)
        batching = self.settings.batching
        # batching.auto_batch_size: the model measures what its device's memory holds (only BlipCaptioner on a
        # GPU can; elsewhere max_batch_size stays as configured).
        measure = getattr(self.captioner, "measure_batch_limit", None)
        if batching.auto_batch_size and callable(measure) and isinstance(self.batcher, Batcher):
            size = await loop.run_in_executor(self._model_pool, measure, batching.max_auto_batch_size)
            if isinstance(size, int) and size >= 1:
                self.batcher.max_batch_size = size

    def _start_decoding(self, sink: DecodeSink) -> StepDecoding:
        """``batching.mode: continuous``: the model's own decode loop (a thread here, or the model process)."""
        start = getattr(self.captioner, "start_decoding", None)
        if not callable(start):
            raise TypeError(
                f"batching.mode: continuous needs a model that decodes step by step, not {self.captioner!r}"
            )
        decoding: StepDecoding = start(sink)
        return decoding

    async def _probe(self) -> None:
        """The health probe: the warm-up image through the model, on the model thread, nothing else."""
        await asyncio.get_running_loop().run_in_executor(self._model_pool, self.captioner.warm_up)

    @property
    def model_identity(self) -> dict[str, Any]:
        """What names this service's answers in a cache key (the variant aside): model, revision, folder, dtype."""
        identity = {k: v for k, v in self._model_id.items() if k != "variant"}
        return {**identity, "path": self.settings.model.path}

    async def close(self, timeout_s: float) -> bool:
        """Finish everything accepted (up to ``timeout_s``), then stop the threads.

        Every request already in ``caption`` finishes before the batcher stops taking work: one still hashing or
        decoding when its variant was retired, or (behind a cascade) with the first model or escalated on its way
        here, is answered, not refused. The caller has stopped routing new requests here."""
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        finished = await self.batcher.drain(max(0.0, timeout_s - (time.monotonic() - started)))
        await self.health.close()
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self._model_pool.shutdown(wait=False, cancel_futures=True)
        if self._shared_cache is not None:
            await self._shared_cache.aclose()
        close_model = getattr(self.captioner, "close", None)  # model.worker: process holds a child process
        if callable(close_model):
            await asyncio.to_thread(close_model)
        return finished

    async def sha256(self, data: bytes) -> str:
        if len(data) <= INLINE_HASH_BYTES:
            return sha256_hex(data)
        async with self._preprocess_slots:  # a big image waits its turn like a decode
            return await sha256_off_loop(data, self._preprocess_pool)

    def overload(self) -> Overloaded | None:
        """The refusal for one more request while this variant's queue is full; None while it has room."""
        batcher = self.batcher
        if batcher.queue_depth >= batcher.max_queue:
            return Overloaded(retry_after_s=batcher.retry_after_s())
        return None

    def key_for(self, image_sha256: str, num_captions: int, key_scope: str | None = None) -> str:
        """The answer's cache key; ``key_scope`` (a tenant, with ``cache.scope: tenant``) keeps its entries apart."""
        # The settings part of the key is the same for every request: build it once per num_captions, so the
        # cache-hit path hashes nothing but the image.
        settings_key = self._settings_keys.get(num_captions)
        if settings_key is None:
            generation = {**self._generation, "num_captions": num_captions}
            settings_key = cache_key("", model_id=self._model_id, generation=generation)
            self._settings_keys[num_captions] = settings_key
        if key_scope is not None:
            return f"{settings_key}:{key_scope}:{image_sha256}"
        return f"{settings_key}:{image_sha256}"

    def cached(self, image_sha256: str, num_captions: int, key_scope: str | None = None) -> CaptionOutcome | None:
        """The answer from the in-process cache, without waiting for anything; None on a miss.

        The cache-hit fast path: it costs a dict lookup, so the caller can skip the machinery (disconnect
        watcher, single-flight, shared cache) that only a miss needs.
        """
        hit = self.cache.peek(self.key_for(image_sha256, num_captions, key_scope))
        return None if hit is None else self._outcome(hit, image_sha256)

    async def caption(
        self,
        data: bytes,
        num_captions: int,
        *,
        deadline: float | None = None,
        image_sha256: str | None = None,
        key_scope: str | None = None,
    ) -> CaptionOutcome:
        """Captions for one image; 504 if inference can't start by ``deadline`` (a ``time.monotonic()`` instant).

        ``image_sha256`` saves hashing again when the caller already has it (the A/B router does).
        """
        started = time.perf_counter()
        self._in_flight += 1
        self._idle.clear()
        try:
            digest = image_sha256 or await self.sha256(data)
            key = self.key_for(digest, num_captions, key_scope)
            lookup = await self.cache.get_or_compute(key, lambda: self._compute(data, num_captions, deadline))
        except CaptionerError as exc:
            if exc.status_code >= 500:  # the variant's failure; a 4xx is the caller's
                self._failed(exc.code, started)
            raise
        except Exception:
            self._failed("internal_error", started)
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        return self._outcome(lookup, digest, started)

    def _failed(self, code: str, started: float) -> None:
        self.stats.failed(time.perf_counter() - started)
        self._series.errors(code).inc()

    def _outcome(self, lookup: Lookup[_Computed], digest: str, started: float | None = None) -> CaptionOutcome:
        series = self._series
        latency = None if lookup.cached or started is None else time.perf_counter() - started
        if latency is not None:
            series.request_seconds.observe(latency)
        # The canary analysis counts each computed answer once; a hit only repeats one (serving/live_stats.py).
        if lookup.cached:
            self.stats.cache_hit()
            series.cache_hits.inc()
            series.served_cached.inc()
        else:
            self.stats.answered(latency, lookup.value.captions[0].confidence if lookup.value.captions else None)
            series.cache_misses.inc()
            series.served_computed.inc()
        if lookup.value.captions:
            series.confidence.observe(lookup.value.captions[0].confidence)
        if lookup.level is not None:
            series.level_hits(lookup.level).inc()
        return CaptionOutcome(
            captions=lookup.value.captions,
            cached=lookup.cached,
            image_sha256=digest,
            info=None if lookup.cached else lookup.value.info,
            batch_size=None if lookup.cached else lookup.value.batch_size,
            variant=self.variant,
            model=lookup.value.model or self.settings.model.name,
            cascade=lookup.value.cascade,
        )

    async def _compute(self, data: bytes, num_captions: int, deadline: float | None) -> _Computed:
        first = self._first
        if first is None:
            computed = await self.infer(data, num_captions, deadline)
        else:
            computed = await self._cascade(first, data, num_captions, deadline)
        self.observer.observe_output(computed.captions)
        return computed

    async def _cascade(
        self, first: CaptionService, data: bytes, num_captions: int, deadline: float | None
    ) -> _Computed:
        """The first model's answer if it is confident enough, else this variant's model's (serving/cascade.py)."""
        screened = await self._screen(first, data, num_captions, deadline)
        top = screened.captions[0].confidence if screened is not None and screened.captions else None
        outcome = decide(top, self._threshold)
        self._series.cascade[outcome].inc()
        if outcome == ACCEPTED and screened is not None:
            return replace(screened, model=first.settings.model.name, cascade=answered(outcome))
        # The first model looked at the image already (the drift features) unless it gave nothing.
        computed = await self.infer(data, num_captions, deadline, observe_input=outcome == FIRST_UNAVAILABLE)
        return replace(computed, cascade=answered(outcome))

    async def _screen(
        self, first: CaptionService, data: bytes, num_captions: int, deadline: float | None
    ) -> _Computed | None:
        """The first model's captions; None when it gives none (down, full, failing, timed out): the main model
        answers instead. A 4xx (a bad image) is the caller's and fails the request."""
        try:
            return await first.infer(data, num_captions, deadline)
        except CaptionerError as exc:
            if exc.status_code < 500:
                raise
            logger.info(
                "cascade: the first model gave no answer (%s); escalating", exc.code,
                extra={"variant": self.variant, "event": "cascade_first_unavailable", "code": exc.code},
            )  # fmt: skip
            return None
        except Exception:
            logger.exception("cascade: the first model failed; escalating", extra={"variant": self.variant})
            return None

    async def infer(
        self, data: bytes, num_captions: int, deadline: float | None, *, observe_input: bool = True
    ) -> _Computed:
        """This model's captions for one image, without the cache: preprocessing, the batcher, the model. A
        cascade's main service calls its first model's through here."""
        self.health.admit()  # a model that can't take work: 503 now, before any decoding
        loop = asyncio.get_running_loop()
        async with self._preprocess_slots:
            if deadline is not None and time.monotonic() >= deadline:
                raise RequestTimeout()  # waited out its deadline in line: decoding it now would be wasted
            prepared = await loop.run_in_executor(self._preprocess_pool, self._preprocess, data, observe_input)
        timeout_s = None
        if deadline is not None:
            timeout_s = deadline - time.monotonic()
            if timeout_s <= 0:
                raise RequestTimeout()
        job = CaptionJob.of(prepared, num_captions)
        if isinstance(self.batcher, ContinuousBatcher):
            decoded = await self.batcher(job, timeout_s=timeout_s)
            return _Computed(decoded.captions, prepared.info, decoded.running)
        inferred = await self.batcher(job, timeout_s=timeout_s)
        return _Computed(inferred.captions, prepared.info, inferred.batch_size)

    def _preprocess(self, data: bytes, observe: bool = True) -> PreparedImage:
        """On a preprocessing thread: decode, then the observer's look (the drift features: ~0.5 ms more)."""
        prepared = self.captioner.preprocess(data)
        if observe:
            self.observer.observe_input(prepared, len(data))
        return prepared

    async def _run_batch(self, jobs: Sequence[CaptionJob]) -> list[_Inferred]:
        self.health.admit()  # queued before the model went down: refused without touching it
        loop = asyncio.get_running_loop()
        results, seconds = await self.health.track(loop.run_in_executor(self._model_pool, self._timed_batch, jobs))
        self._series.inference_seconds.observe(seconds)
        self._series.images.inc(len(jobs))
        return [_Inferred(captions, len(jobs)) for captions in results]

    def _timed_batch(self, jobs: Sequence[CaptionJob]) -> tuple[list[list[Caption]], float]:
        """On the model thread, where a full batch may have waited for the one before it (batcher.py): it is
        admitted again now, and a device that failed under the batch before is not touched (that news reaches
        ``health`` through the event loop, which may not have run yet). Timed from here, not from the wait."""
        if self._device_failed:
            raise ModelUnavailable("the model failed; this replica is restarting", retry_after_s=1)
        self.health.admit()
        started = time.perf_counter()
        try:
            results = self.captioner.caption_batch(jobs)
        except ModelProcessDied as exc:
            # Not the requests' fault that we know of: 503 + Retry-After (the respawn's backoff), which a load
            # balancer retries elsewhere; a job goes back to the queue. Not a failed batch either: the death
            # itself takes the model out (model_down) until its successor is warm.
            retry_s = max(1.0, self.settings.health.respawn_backoff_s)
            raise ModelLost(retry_after_s=retry_s) from exc
        except BaseException as exc:
            if is_fatal_device_error(exc):
                self._device_failed = True
            raise
        return results, time.perf_counter() - started

    def _observe_batch(self, info: BatchInfo) -> None:
        self._series.batch_size.observe(info.size)
        self._series.batch_wait_seconds.observe(info.waited_s)


def _shared_cache(settings: Settings, metrics: Metrics) -> RedisCacheLevel[_Computed] | None:
    """Redis behind the local cache when ``cache.redis_url`` is set; every failure there reads as a miss."""
    if not settings.cache.redis_url:
        return None

    def count_error(operation: str) -> None:
        metrics.cache_backend_errors.labels(operation).inc()

    metrics.cache_backend_up.set(1)
    store = RedisClient(
        settings.cache.redis_url,
        name="cache",
        timeout_s=settings.cache.redis_timeout_s,
        on_error=count_error,
        on_state=lambda up: metrics.cache_backend_up.set(1 if up else 0),
    )
    return RedisCacheLevel(store, ttl_s=settings.cache.ttl_s, encode=_encode, decode=_decode, on_error=count_error)
