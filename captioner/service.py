"""The data path after HTTP parsing: hash -> cache (single-flight) -> preprocess -> batcher -> model.

``CaptionService`` owns the pieces with a lifetime (thread pools, batcher, cache) and knows nothing of HTTP.
The event loop only schedules: hashing of big bodies, decoding and the model all run on threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from .batcher import Batcher, BatchInfo
from .cache import CaptionCache, cache_key
from .config import Settings
from .errors import RequestTimeout
from .images import ImageInfo
from .metrics import Metrics
from .model import Caption, Captioner, CaptionJob

logger = logging.getLogger("captioner.service")

# Hashing is ~1 GB/s; below this size a thread hop costs more than hashing inline.
_INLINE_HASH_BYTES = 256 * 1024


@dataclass(frozen=True)
class CaptionOutcome:
    captions: list[Caption]
    cached: bool
    image_sha256: str
    info: ImageInfo | None  # None on a cache hit: the image was never decoded


@dataclass(frozen=True)
class _Computed:
    captions: list[Caption]
    info: ImageInfo


class CaptionService:
    def __init__(self, settings: Settings, captioner: Captioner, metrics: Metrics) -> None:
        self.settings = settings
        self.captioner = captioner
        self.metrics = metrics
        gen = settings.generation
        self._model_id = {"name": captioner.name, "revision": captioner.revision, "prompt": settings.model.prompt}
        self._generation = {k: v for k, v in asdict(gen).items() if k not in ("num_captions", "max_num_captions")}
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-model")
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.server.preprocess_workers, thread_name_prefix="captioner-preprocess"
        )
        batching = settings.batching
        self.batcher: Batcher[CaptionJob, list[Caption]] = Batcher(
            self._run_batch,
            max_batch_size=batching.max_batch_size,
            max_wait_s=batching.max_wait_ms / 1000,
            max_queue=batching.max_queue,
            request_timeout_s=batching.request_timeout_s,
            on_batch=self._observe_batch,
        )
        self.cache: CaptionCache[_Computed] = CaptionCache(
            max_entries=settings.cache.max_entries, ttl_s=settings.cache.ttl_s
        )
        metrics.queue_depth.set_function(lambda: self.batcher.queue_depth)
        metrics.queue_capacity.set(batching.max_queue)

    def start(self) -> None:
        self.batcher.start()

    async def warm_up(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._model_pool, self.captioner.warm_up)

    async def close(self, timeout_s: float) -> bool:
        """Finish everything accepted (up to ``timeout_s``), then stop the threads."""
        finished = await self.batcher.drain(timeout_s)
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self._model_pool.shutdown(wait=False, cancel_futures=True)
        return finished

    async def sha256(self, data: bytes) -> str:
        if len(data) <= _INLINE_HASH_BYTES:
            return hashlib.sha256(data).hexdigest()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._preprocess_pool, lambda: hashlib.sha256(data).hexdigest())

    def key_for(self, image_sha256: str, num_captions: int) -> str:
        return cache_key(
            image_sha256, model_id=self._model_id, generation={**self._generation, "num_captions": num_captions}
        )

    async def caption(self, data: bytes, num_captions: int, *, deadline: float | None = None) -> CaptionOutcome:
        """Captions for one image; 504 if inference can't start by ``deadline`` (a ``time.monotonic()`` instant)."""
        digest = await self.sha256(data)
        key = self.key_for(digest, num_captions)
        lookup = await self.cache.get_or_compute(key, lambda: self._compute(data, num_captions, deadline))
        (self.metrics.cache_hits if lookup.cached else self.metrics.cache_misses).inc()
        return CaptionOutcome(
            captions=lookup.value.captions,
            cached=lookup.cached,
            image_sha256=digest,
            info=None if lookup.cached else lookup.value.info,
        )

    async def _compute(self, data: bytes, num_captions: int, deadline: float | None) -> _Computed:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._preprocess_pool, self.captioner.preprocess, data)
        timeout_s = None
        if deadline is not None:
            timeout_s = deadline - time.monotonic()
            if timeout_s <= 0:
                raise RequestTimeout()
        captions = await self.batcher(CaptionJob(prepared.pixel_values, num_captions), timeout_s=timeout_s)
        return _Computed(captions, prepared.info)

    async def _run_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._model_pool, self.captioner.caption_batch, jobs)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.images.inc(len(jobs))
        return results

    def _observe_batch(self, info: BatchInfo) -> None:
        self.metrics.batch_size.observe(info.size)
        self.metrics.batch_wait_seconds.observe(info.waited_s)
