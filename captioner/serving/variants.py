"""A/B variants: several models served side by side, each with its own batcher, traffic split by weight.

Assignment is sticky: the same image, or the same end user (``X-Assignment-Key``), always lands on the same
variant while the weights stay put, so a user never sees captions flip between models from one call to the
next; never the API key (assignment.py says why). ``pick`` is a pure function of the weights and the sticky
key (rendezvous over a hash), which makes the split testable without traffic.

Some variants are *optional* (the canary, named by the pool's owner: rollout/canary.py): one that fails to load
is recorded in ``failed`` rather than failing the pool, and its health never makes the replica unready while
another variant takes traffic. Its own analysis deals with it (a failed or long-down canary is rolled back).

Rollback is a config change: set a variant's weight to 0 and send SIGHUP. New weights apply to the next
request; requests already routed to a variant finish there; a removed variant is drained, then closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

from captioner.config import Settings
from captioner.errors import Overloaded
from captioner.model import heap
from captioner.model.protocol import Captioner
from captioner.observability.metrics import Metrics
from captioner.serving.cascade import FIRST_VARIANT
from captioner.serving.health import OnFatal
from captioner.serving.service import CaptionService, ImageObserver

logger = logging.getLogger("captioner.variants")


def _unit_interval(text: str) -> float:
    """A uniform number in [0, 1) from ``text``, the same on every replica and every run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def pick(weights: Sequence[tuple[str, float]], sticky_key: str) -> str:
    """The variant ``sticky_key`` is assigned to: variant ``i`` with probability ``w_i / sum(w)``.

    Weighted rendezvous hashing: each variant scores ``-ln(u) / w`` with ``u`` derived from (key, variant),
    and the lowest score wins. Unlike cumulative ranges, changing one variant's weight only moves keys to or
    from that variant, never between the others, and a weight of 0 takes a variant out entirely.
    """
    live = [name for name, weight in weights if weight > 0]
    if len(live) == 1:
        return live[0]  # what the scores below would say, without hashing on every request
    best_name, best_score = "", math.inf
    for name, weight in weights:
        if weight <= 0:
            continue
        u = _unit_interval(f"{name}\0{sticky_key}")
        score = -math.log(1.0 - u) / weight  # 1 - u is in (0, 1]: no log(0)
        if score < best_score:
            best_name, best_score = name, score
    if not best_name:
        raise ValueError("no variant has a weight above 0")
    return best_name


@dataclass
class Variant:
    name: str
    weight: float
    settings: Settings  # the app's settings with this variant's `model` section
    service: CaptionService


@dataclass
class FailedVariant:
    """An optional variant whose model could not be loaded: not routed to, kept for its analysis to act on."""

    name: str
    weight: float
    settings: Settings
    reason: str  # the exception's type: its message (paths, hosts) is in the log only
    since: float  # time.monotonic() when the load failed


class VariantRouter:
    """The live variants and their weights; swapped under SIGHUP without stopping traffic."""

    def __init__(self) -> None:
        self._variants: dict[str, Variant] = {}

    def __len__(self) -> int:
        return len(self._variants)

    def __iter__(self) -> Iterator[Variant]:
        return iter(list(self._variants.values()))  # a copy: a reload may change the dict meanwhile

    def get(self, name: str) -> Variant | None:
        return self._variants.get(name)

    def add(self, variant: Variant) -> Variant | None:
        """Add or replace a variant; returns the one it replaced (to be drained by the caller)."""
        previous = self._variants.get(variant.name)
        self._variants[variant.name] = variant
        return previous

    def remove(self, name: str) -> Variant | None:
        return self._variants.pop(name, None)

    def set_weight(self, name: str, weight: float) -> None:
        self._variants[name].weight = weight

    @property
    def weights(self) -> list[tuple[str, float]]:
        return [(v.name, v.weight) for v in self._variants.values()]

    def choose(self, sticky_key: str) -> Variant:
        weights = self.weights
        if not any(weight > 0 for _, weight in weights):
            raise Overloaded("no model variant is taking traffic", retry_after_s=5)
        return self._variants[pick(weights, sticky_key)]

    def any_service(self) -> CaptionService | None:
        """A service for work that is the same on every variant (hashing, admission checks)."""
        for variant in self._variants.values():
            if variant.weight > 0:
                return variant.service
        return next(iter(self._variants.values())).service if self._variants else None


@dataclass(frozen=True)
class ReloadPlan:
    """What a new config means for the live variants."""

    reweight: dict[str, float]  # same model: only the weight changes (may be 0)
    load: list[tuple[str, float, Settings]]  # new, or the model settings changed: load, warm up, then swap in
    remove: list[str]  # gone from the config: stop routing, drain, close


def plan_reload(router: VariantRouter, settings: Settings) -> ReloadPlan:
    reweight: dict[str, float] = {}
    load: list[tuple[str, float, Settings]] = []
    wanted = settings.variants()
    for name, weight, variant_settings in wanted:
        live = router.get(name)
        if live is not None and live.settings.model == variant_settings.model:
            reweight[name] = weight
        else:
            load.append((name, weight, variant_settings))
    names = {name for name, _, _ in wanted}
    remove = [variant.name for variant in router if variant.name not in names]
    return ReloadPlan(reweight=reweight, load=load, remove=remove)


LoadModel = Callable[[Settings], Captioner]


class VariantPool:
    """Starts, reloads and stops the variants' services (model + batcher + cache each)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        load_model: LoadModel,
        observer: ImageObserver | None = None,
        on_fatal: OnFatal | None = None,
        optional: Collection[str] = (),
        first: Settings | None = None,
    ) -> None:
        """``first``: the settings of a confidence cascade's first model (``model`` is its folder), shared by every
        variant; None without a cascade (serving/cascade.py)."""
        self.settings = settings
        self.metrics = metrics
        self._on_fatal = on_fatal
        self.optional = frozenset(optional)  # variants that may fail without failing the replica (module doc)
        self.failed: dict[str, FailedVariant] = {}  # optional variants whose load failed, by name
        self.router = VariantRouter()
        self._load_model = load_model
        self._observer = observer
        self._retired: set[asyncio.Task[bool]] = set()
        self._reloading = asyncio.Lock()
        self._first_settings = first
        self.first: CaptionService | None = None  # the cascade's first model, once started

    async def start(self) -> None:
        """Load and warm up every configured variant (one after the other: they share the device), after the
        cascade's first model if there is one (a first model that can't load stops the start, like a variant)."""
        if self._first_settings is not None:
            # Its failures later only escalate, so it never makes the replica unready, nor exit (no on_fatal).
            self.first = await self._start_service(FIRST_VARIANT, self._first_settings, on_fatal=None)
        for name, weight, variant_settings in self.settings.variants():
            await self._load(name, weight, variant_settings)
        if not len(self.router):  # only optional variants, all failed: nothing to serve with
            failed = ", ".join(f"{f.name} ({f.reason})" for f in self.failed.values())
            raise RuntimeError(f"no variant could be loaded: {failed}")

    async def _load(self, name: str, weight: float, settings: Settings) -> None:
        """Load one variant and route to it; an optional one that fails is recorded in ``failed`` instead (and
        what served under its name stops: it is not what the config asks for any more)."""
        try:
            variant = await self._start_variant(name, weight, settings)
        except Exception as exc:
            if name not in self.optional:
                raise
            logger.exception(
                "variant %s failed to load; the other variants serve without it", name,
                extra={"variant": name, "event": "variant_load_failed", "model": settings.model.name},
            )  # fmt: skip
            self.failed[name] = FailedVariant(name, weight, settings, type(exc).__name__, time.monotonic())
            replaced = self.router.remove(name)
            if replaced is not None:
                self._retire(replaced)
            self.metrics.variant_weight.labels(name).set(0)
            return
        self.failed.pop(name, None)
        self._install(variant)

    async def _start_variant(self, name: str, weight: float, settings: Settings) -> Variant:
        service = await self._start_service(name, settings, on_fatal=self._on_fatal, first=self.first)
        logger.info(
            "variant %s ready: model %s on %s (%s), weight %g", name, service.captioner.name,
            service.captioner.device, service.captioner.dtype, weight,
            extra={"model": service.captioner.name, "revision": service.captioner.revision,
                   "device": service.captioner.device, "dtype": service.captioner.dtype, "variant": name,
                   "weight": weight, "untrained": service.captioner.untrained,
                   "cascade_first": self.first.settings.model.name if self.first is not None else None},
        )  # fmt: skip
        return Variant(name=name, weight=weight, settings=settings, service=service)

    async def _start_service(
        self, name: str, settings: Settings, *, on_fatal: OnFatal | None, first: CaptionService | None = None
    ) -> CaptionService:
        model = await asyncio.to_thread(self._load_model, settings)
        labels = {"name": model.name, "revision": model.revision, "device": model.device, "dtype": model.dtype}
        self.metrics.model_info.labels(name).info(labels)
        if model.untrained:
            logger.warning(
                "variant %s serves an UNTRAINED model (random weights from captioner init-model): "
                "its captions are meaningless", name,
                extra={"variant": name, "untrained": True},
            )  # fmt: skip
        service = CaptionService(
            settings, model, self.metrics, observer=self._observer, variant=name, on_fatal=on_fatal, first=first
        )
        service.start()
        try:
            await service.warm_up()
        except BaseException:
            await service.close(0)
            raise
        heap.settle()  # the model's objects are long-lived: out of the GC's full passes (model/heap.py)
        return service

    def _install(self, variant: Variant) -> None:
        replaced = self.router.add(variant)
        self.metrics.variant_weight.labels(variant.name).set(variant.weight)
        if replaced is not None:
            self._retire(replaced)

    def _retire(self, variant: Variant) -> None:
        """Stop routing to ``variant`` (done by the caller), then let what it accepted finish, then close it."""
        task = asyncio.create_task(self._close_retired(variant.service))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _close_retired(self, service: CaptionService) -> bool:
        finished = await service.close(self.settings.server.drain_timeout_s)
        del service  # the last reference: the old model is garbage now, frozen or not
        heap.settle()
        return finished

    async def reload(self, settings: Settings) -> ReloadPlan:
        """Apply a new `models:` list: reweight at once, load changed variants in the background of traffic.

        One reload at a time (a SIGHUP and a registry change may arrive together): each plans against what the
        one before it installed.
        """
        async with self._reloading:
            return await self._reload(settings)

    async def _reload(self, settings: Settings) -> ReloadPlan:
        plan = plan_reload(self.router, settings)
        for name, weight in plan.reweight.items():
            self.router.set_weight(name, weight)
            self.metrics.variant_weight.labels(name).set(weight)
        for name in plan.remove:
            self.failed.pop(name, None)
            removed = self.router.remove(name)
            if removed is not None:
                self.metrics.variant_weight.labels(name).set(0)
                self._retire(removed)
        wanted = {name for name, _, _ in settings.variants()}
        for name in [name for name in self.failed if name not in wanted]:
            del self.failed[name]  # a failed load the config no longer asks for (the canary rolled back)
        for name, weight, variant_settings in plan.load:
            # The old variant (if any) keeps serving until its replacement is warm.
            await self._load(name, weight, variant_settings)
        self.settings = settings
        logger.info("reloaded variants: %s", ", ".join(f"{n}={w:g}" for n, w in self.router.weights))
        return plan

    def set_weight(self, name: str, weight: float) -> None:
        """Reweight one variant now (the canary analysis' rollback); the next reload may change it again."""
        failed = self.failed.get(name)
        if failed is not None:
            failed.weight = weight
        if self.router.get(name) is not None:
            self.router.set_weight(name, weight)
        self.metrics.variant_weight.labels(name).set(weight)

    def choose(self, sticky_key: str) -> Variant:
        return self.router.choose(sticky_key)

    def overload(self) -> Overloaded | None:
        """The refusal when every variant taking traffic has a full queue (whichever one a request would go to
        is full, so it can be refused before its body is read); None while one has room."""
        refusals = [v.service.overload() for v in self.router if v.weight > 0]
        if not refusals or any(refusal is None for refusal in refusals):
            return None
        return min(refusals, key=lambda refusal: refusal.retry_after_s if refusal is not None else 0.0)

    def health_problems(self) -> list[str]:
        """Why a variant taking traffic can't take work (its model is down, failing or failed); [] if none.

        For /readyz: an optional variant's problems are left out while another variant takes traffic (that one
        still serves; the optional one's analysis deals with it).
        """
        taking = [variant for variant in self.router if variant.weight > 0]
        required = [variant for variant in taking if variant.name not in self.optional] or taking
        problems = []
        for variant in required:
            problem = variant.service.health.problem
            if problem is not None:
                problems.append(problem if len(self.router) == 1 else f"variant {variant.name}: {problem}")
        return problems

    def work_refusal(self) -> Overloaded | None:
        """Why this replica's job worker should claim nothing now: a variant taking traffic can't take model
        work (its model down, failing or failed: what /readyz reports), or every one has a full queue. None when
        it may claim."""
        for variant in self.router:
            if variant.weight > 0 and not variant.service.health.ready:
                try:
                    variant.service.health.admit()
                except Overloaded as refusal:
                    return refusal
        return self.overload()

    def expedite(self) -> None:
        """Draining: every variant (and the cascade's first model) dispatches what it has queued without waiting
        for its batch deadline."""
        for variant in self.router:
            variant.service.batcher.expedite()
        if self.first is not None:
            self.first.batcher.expedite()

    async def close(self, timeout_s: float) -> bool:
        """Drain every variant (in parallel) and any still retiring, and the cascade's first model; True if all
        finished in time. A variant lets what is still with the first model through before it drains."""
        closing = [v.service.close(timeout_s) for v in self.router]
        if self.first is not None:
            closing.append(self.first.close(timeout_s))
        results = await asyncio.gather(*closing, *self._retired)
        return all(results)
