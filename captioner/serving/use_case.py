"""The caption use case: admit -> look up -> caption -> outcome. Every way in goes through it.

Sync ``POST /api/v1/caption``, Hugging Face's ``POST /``, the async job worker and an ``api``-role replica's relay
all call ``CaptionUseCase``, so each answers the same way:

1. ``admit()``, before the body is read: 503 while the server drains or loads, or when every variant taking
   traffic has a full queue (a refusal then costs nothing).
2. ``look_up(command)``: fetch the URL if the image came as one, hash it, choose the A/B variant (sticky to the
   image, or to the caller's ``X-Assignment-Key``: serving/assignment.py), refuse with 503 when *that*
   variant's queue is full, and peek at its cache. The answer is a ``Pending``: the outcome already (a hit), or
   the work that produces it.
3. ``Pending.run()``: the variant's service (single-flight cache, preprocessing, batcher, model), or, with no
   model in this process, the relay through the job queue.

Every answer a model side gives, hit or not, then passes two checks before it leaves: ``cached`` as the caller's
tenant may see it (serving/privacy.py, ``cache.scope``), and the blocked words (serving/content_filter.py). A relayed
answer had both on the worker that made it.

``caption(command)`` does 2 and 3 for work accepted already (the job worker). HTTP does them one
by one: it parses between 1 and 2, and on a hit it skips the disconnect watcher that only a miss needs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from captioner.errors import Overloaded
from captioner.serving.assignment import sticky_key
from captioner.serving.content_filter import ContentFilter
from captioner.serving.outcome import CaptionOutcome
from captioner.serving.privacy import CachePrivacy

if TYPE_CHECKING:  # types only: an api-role replica (a relay) never imports the model side
    from captioner.serving.service import CaptionService
    from captioner.serving.variants import VariantPool

# Fetches an image given by URL (outbound/url_fetch.py): its bytes, or a 4xx error.
FetchUrl = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class CaptionCommand:
    """One parsed caption request: the image (or its URL), how many captions, by when, and for whom."""

    image: bytes | None
    url: str | None
    num_captions: int
    deadline: float  # a time.monotonic() instant: past it, no work starts (504)
    api_key: str | None = None  # the caller's key principal ("key:<id>"), when auth is on: a relayed job's owner
    idempotency_key: str | None = None  # a relayed request is deduplicated on it
    assignment_key: str | None = None  # X-Assignment-Key: keeps one end user on one variant (never the API key)
    tenant: str | None = None  # the caller's tenant (guard/tenants.py); None with auth off

    @classmethod
    def within(cls, timeout_s: float, **fields: object) -> CaptionCommand:
        """A command whose deadline is ``timeout_s`` from now."""
        return cls(deadline=time.monotonic() + timeout_s, **fields)  # type: ignore[arg-type]


class ServingStatus(Protocol):
    """What the use case reads of the running server (``runtime/``): its variants, and whether it takes work."""

    @property
    def pool(self) -> VariantPool | None:
        """The live variants; None on a replica without a model, or until they are loaded."""

    def refusal(self) -> Overloaded | None:
        """Why no new work is taken now (draining, loading); None when it is."""


class Relay(Protocol):
    """Captions made elsewhere: an ``api``-role replica hands the request to the workers (jobs/relay.py)."""

    async def caption(self, command: CaptionCommand) -> CaptionOutcome: ...


class Pending:
    """A looked-up request: ``hit`` when the cache had the answer, else ``run()`` produces it."""

    __slots__ = ("_run", "hit", "image_bytes")

    def __init__(
        self, run: Callable[[Pending], Awaitable[CaptionOutcome]], hit: CaptionOutcome | None, image_bytes: int | None
    ) -> None:
        self._run = run
        self.hit = hit
        self.image_bytes = image_bytes  # known once the image is here (after the fetch, for a URL)

    async def run(self) -> CaptionOutcome:
        return self.hit if self.hit is not None else await self._run(self)


class CaptionUseCase:
    def __init__(
        self,
        status: ServingStatus,
        fetch_url: FetchUrl,
        relay: Relay | None = None,
        *,
        privacy: CachePrivacy | None = None,
        content: ContentFilter | None = None,
    ) -> None:
        self._status = status
        self._fetch_url = fetch_url
        self._relay = relay
        self.privacy = privacy or CachePrivacy("global")
        self._content = content

    def admit(self) -> None:
        """Refuse (503) before anything is read when no work can be taken: draining, loading, or every variant's
        queue full."""
        refusal = self._status.refusal()
        if refusal is not None:
            raise refusal
        if self._relay is not None:
            return  # the workers' queues are the job queue's business (a full stream is a 503 there)
        pool = self._status.pool
        if pool is None:
            raise Overloaded("the model is still loading", retry_after_s=5)
        refusal = pool.overload()
        if refusal is not None:
            raise refusal

    async def look_up(self, command: CaptionCommand) -> Pending:
        """Route the request and peek at the cache; see the module's docstring."""
        relay = self._relay
        if relay is not None:
            return Pending(lambda _: relay.caption(command), None, len(command.image or b"") or None)
        if command.image is None:
            return Pending(lambda pending: self._fetch_and_caption(command, pending), None, None)
        digest, service = await self._route(command.image, command)
        hit = service.cached(digest, command.num_captions, self.privacy.key_scope(command.tenant))
        if hit is not None:
            hit = await self._answer(service, digest, command, hit)
        image = command.image
        return Pending(lambda _: self._caption(service, image, digest, command), hit, len(image))

    async def caption(self, command: CaptionCommand) -> CaptionOutcome:
        """Look up and caption, for work accepted already (a job): admission was at its submission, and a
        drain finishes it rather than refusing it."""
        return await (await self.look_up(command)).run()

    def variant_for(self, image_sha256: str, assignment_key: str | None) -> str | None:
        """The variant that answers (or, with the weights unchanged, answered) this image for a caller that sends
        this assignment key (None: none sent); None with no variant here."""
        pool = self._status.pool
        return None if pool is None else pool.choose(sticky_key(image_sha256, assignment_key)).name

    async def _fetch_and_caption(self, command: CaptionCommand, pending: Pending) -> CaptionOutcome:
        assert command.url is not None, "a command carries an image or a URL"
        image = await self._fetch_url(command.url)
        pending.image_bytes = len(image)
        digest, service = await self._route(image, command)
        return await self._caption(service, image, digest, command)

    async def _route(self, image: bytes, command: CaptionCommand) -> tuple[str, CaptionService]:
        """The image's SHA-256 and the variant's service that will caption it (503 if its queue is full)."""
        pool = self._status.pool
        if pool is None:
            raise Overloaded("the model is not loaded", retry_after_s=5)
        service = pool.router.any_service()
        assert service is not None, "a loaded pool has a variant"
        digest = await service.sha256(image)
        chosen = pool.choose(sticky_key(digest, command.assignment_key)).service
        refusal = chosen.overload()
        if refusal is not None:
            raise refusal
        return digest, chosen

    async def _caption(
        self, service: CaptionService, image: bytes, digest: str, command: CaptionCommand
    ) -> CaptionOutcome:
        key_scope = self.privacy.key_scope(command.tenant)
        outcome = await service.caption(
            image, command.num_captions, deadline=command.deadline, image_sha256=digest, key_scope=key_scope
        )
        return await self._answer(service, digest, command, outcome)

    async def _answer(
        self, service: CaptionService, digest: str, command: CaptionCommand, outcome: CaptionOutcome
    ) -> CaptionOutcome:
        """The outcome as it may leave: ``cached`` as the tenant may see it, no blocked word."""
        key = service.key_for(digest, command.num_captions, self.privacy.key_scope(command.tenant))
        outcome = await self.privacy.disclose(command.tenant, key, outcome)
        captions = self._content.apply(outcome.captions) if self._content is not None else None
        return outcome if captions is None else replace(outcome, captions=captions)
