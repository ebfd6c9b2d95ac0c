"""Serving from the registry: its aliases become the A/B variants, and a change to them is applied live.

With ``registry.path`` set the server serves ``registry.name``'s ``production`` version as the variant
``production`` and, when there is one, its ``canary`` as the variant ``canary`` at the canary's weight (percent;
production keeps the rest). Each variant's ``model.name`` is ``<name>:<version>`` (what responses and
``captioner_model_info`` show) and its ``model.revision`` the version. Until the registry has a production
version, ``model.path`` is served as ``production`` (a warning says so), so a fresh deployment can start.

Replicas find alias changes by polling: every ``registry.poll_s`` a ``stat`` of ``aliases.json`` (which is
replaced by rename, so a new inode or mtime means a new file), and a read only when that changed. Polling works
unchanged on a volume shared by every pod (NFS, EFS, a ReadWriteMany PVC), where inotify sees nothing of other
hosts' writes, and needs neither a signal sent to every process nor an admin endpoint and its key. A change is
applied through ``VariantPool.reload``: the new model loads and warms up while the old one serves, then takes
over; requests already routed finish where they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.config import Settings
from captioner.config.settings import REGISTRY_PREFIX
from captioner.model.weights import WeightsUnavailable, has_weights
from captioner.observability.metrics import Metrics
from captioner.registry.aliases import CANARY, PRODUCTION, AliasError, Aliases, now_iso
from captioner.registry.store import MODEL_DIR, Registry, RegistryError
from captioner.rollout.canary import Verdict

if TYPE_CHECKING:  # a type only: an api replica reads the registry's aliases without the model side
    from captioner.serving.variants import FailedVariant, Variant

logger = logging.getLogger("captioner.registry")


class RegistrySource:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.registry = Registry(settings.registry.path)
        self.name = settings.registry.name
        self.poll_s = settings.registry.poll_s
        self._metrics = metrics
        self.aliases = Aliases()
        self._signature: tuple[int, int, int] | None = None
        self._vetoed: set[int] = set()  # canary versions this process rolled back: never routed to again
        self._warned_empty = False

    def refresh(self) -> bool:
        """Re-read the aliases if the file changed (blocking: call it on a thread). True if the served set changed."""
        path = self.registry.aliases_path(self.name)
        try:
            stat = os.stat(path)
            signature: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature and signature is not None:
            return False
        try:
            aliases = self.registry.aliases(self.name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("cannot read %s (%s); serving what runs now", path, exc)
            return False
        self._signature = signature
        before = (self.aliases.production, self.aliases.canary)
        self.aliases = aliases
        return (aliases.production, aliases.canary) != before

    def resolve(self, settings: Settings) -> Settings:
        """``settings`` with ``models`` set to the variants the registry's aliases (as last read) ask for."""
        aliases = self.aliases
        canary = aliases.canary if aliases.canary is not None and aliases.canary.version not in self._vetoed else None
        production_weight = 100.0 - (canary.weight if canary is not None else 0.0)
        if aliases.production is None:
            if not self._warned_empty:
                logger.warning(
                    "registry %s has no production version of %s yet: serving model.path %s until it has",
                    self.registry.root, self.name, settings.model.path,
                )  # fmt: skip
                self._warned_empty = True
            entries: list[dict[str, Any]] = [{"variant": PRODUCTION, "weight": 100.0}]
        else:
            entries = [self._entry(PRODUCTION, aliases.production, production_weight)]
            if canary is not None:
                entries.append(self._entry(CANARY, canary.version, canary.weight))
        if self._metrics is not None:
            self._metrics.registry_version.labels(PRODUCTION).set(aliases.production or 0)
            self._metrics.registry_version.labels(CANARY).set(canary.version if canary is not None else 0)
        return settings.replace("models", variants=entries)

    def _entry(self, variant: str, version: int, weight: float) -> dict[str, Any]:
        folder = self.registry.root / self.name / str(version) / MODEL_DIR
        return {"variant": variant, "weight": weight, "path": str(folder), "name": f"{self.name}:{version}",
                "revision": str(version)}  # fmt: skip

    def version_of(self, variant: Variant | FailedVariant) -> int | None:
        """The registry version a variant serves, or failed to load (None for the model.path fallback)."""
        path = Path(variant.settings.model.path)
        if path.name != MODEL_DIR or path.parent.parent != self.registry.root / self.name:
            return None
        return int(path.parent.name) if path.parent.name.isdigit() else None

    async def watch(self, apply: Callable[[], Awaitable[None]]) -> None:
        """Poll for alias changes for ever, calling ``apply`` (a reload through ``resolve``) after each."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if await asyncio.to_thread(self.refresh):
                    logger.info(
                        "registry aliases changed: production %s, canary %s", self.aliases.production,
                        self.aliases.canary, extra={"event": "registry_change"},
                    )  # fmt: skip
                    await apply()
            except Exception:  # a bad read or a failed load must not stop the polling; the running set stays
                logger.exception("applying the registry's aliases failed; the running variants stay")

    async def on_canary_rollback(self, canary: Variant | FailedVariant, verdict: Verdict) -> None:
        """The canary analysis rolled ``canary`` back: never route to it again here, and clear the alias."""
        version = self.version_of(canary)
        if version is None:
            return
        self._vetoed.add(version)
        await asyncio.to_thread(self._record_rollback, version, verdict)

    def _record_rollback(self, version: int, verdict: Verdict) -> None:
        by = f"captioner serve (pid {os.getpid()}): automatic canary analysis"

        def clear(aliases: Aliases) -> Aliases:
            if aliases.canary is None or aliases.canary.version != version:
                raise AliasError("the canary moved on meanwhile")  # another replica (or a person) acted first
            return aliases.canary_cleared(by=by, reason=f"{verdict.reason}: {verdict.detail}", automatic=True)

        try:
            self.registry.update_aliases(self.name, clear)
        except AliasError:
            return
        except (OSError, RegistryError) as exc:
            logger.error("could not clear the registry's canary alias (%s); it stays at weight 0 here", exc)
            return
        record = {"time": now_iso(), "reason": verdict.reason, "detail": verdict.detail, "by": by, "automatic": True}
        self.registry.update_meta(self.name, version, lambda meta: meta.setdefault("rollbacks", []).append(record))
        logger.warning("registry: %s version %d is no longer the canary (%s)", self.name, version, verdict.reason)


def cascade_first(settings: Settings) -> Settings | None:
    """The settings a confidence cascade's first model is served with; None without a cascade (blocking: it may read
    the registry). Its ``model`` section is the main one's (device, dtype, worker...) with the first model's folder
    and name: ``registry:<name>[@alias|@version]`` is that version's folder in ``registry.path``, named
    ``<name>:<version>`` like a served version; a folder is named by its last part. Resolved once, at start-up: a
    registry alias that moves later takes effect at the next restart.

    Raises ``RegistryError`` for a registry alias that points nowhere and ``WeightsUnavailable`` for a folder that
    holds no model (never downloaded: a first model is one you made)."""
    cascade = settings.cascade
    if not cascade.enabled:
        return None
    first = cascade.first.strip()
    if first.startswith(REGISTRY_PREFIX):
        name, _, alias = first[len(REGISTRY_PREFIX) :].partition("@")
        registry = Registry(settings.registry.path)
        if alias.isdigit():
            number: int | None = int(alias)
        else:
            aliases = registry.aliases(name)
            canary = aliases.canary.version if aliases.canary is not None else None
            number = canary if alias == CANARY else aliases.production
        if number is None:
            raise RegistryError(
                f"cascade.first {first}: {name} has no {alias or PRODUCTION} version in {registry.root}"
            )
        folder = registry.version(name, number).model_dir
        model = dataclasses.replace(settings.model, path=str(folder), name=f"{name}:{number}", revision=str(number))
    else:
        folder = Path(first)
        model = dataclasses.replace(settings.model, path=first, name=folder.resolve().name)
    if not has_weights(folder):
        raise WeightsUnavailable(f"cascade.first: {folder} holds no model weights (write one with captioner train)")
    # Its answers are cached only as a variant's (the cascade's key): no cache, no Redis of its own.
    cache = dataclasses.replace(settings.cache, max_entries=0, redis_url="")
    return dataclasses.replace(settings, model=model, models=(), cache=cache)
