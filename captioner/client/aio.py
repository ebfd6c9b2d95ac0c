"""``AsyncClient``: the asyncio client. It awaits the flows' steps with ``httpx.AsyncClient`` and ``asyncio.sleep``."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx

from captioner.client.base import ClientBase, job_id_of
from captioner.client.flows import Flow, ImageInput, Sleep, is_loaded, load_image
from captioner.client.results import CaptionResult, Job
from captioner.client.sync import DEFAULT_RESULT_TIMEOUT_S

T = TypeVar("T")


class AsyncClient(ClientBase[httpx.AsyncClient]):
    """The asyncio twin of ``Client``: the same methods and options, awaited."""

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    async def caption(
        self, image: ImageInput, num_captions: int | None = None, *, idempotency_key: str | None = None
    ) -> CaptionResult:
        """Caption one image and wait for the answer (``POST /api/v1/caption``); see ``Client.caption``."""
        flow = self._flows.caption(await _load(image), num_captions, idempotency_key=idempotency_key)
        return await self._run(flow)

    async def submit(
        self,
        image: ImageInput,
        num_captions: int | None = None,
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Start an async job (``?mode=async``); the same ``idempotency_key`` gets the same job (none given:
        a fresh random key, the same on each retry of this call)."""
        flow = self._flows.submit(
            await _load(image), num_captions, idempotency_key=idempotency_key, callback_url=callback_url
        )
        return await self._run(flow)

    async def result(
        self, job: Job | str, *, wait: bool = True, timeout: float | None = DEFAULT_RESULT_TIMEOUT_S
    ) -> CaptionResult:
        """A job's captions, polling until it is done; see ``Client.result``."""
        return await self._run(self._flows.result(job_id_of(job), wait=wait, timeout=timeout))

    async def feedback(
        self,
        *,
        image_sha256: str | None = None,
        job_id: str | None = None,
        caption: str,
        rating: int,
        correction: str | None = None,
    ) -> None:
        """Rate a caption (1..5, 5 best), with an optional corrected caption; see ``Client.feedback``."""
        flow = self._flows.feedback(
            image_sha256=image_sha256, job_id=job_id, caption=caption, rating=rating, correction=correction
        )
        await self._run(flow)

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``, tried once: raises ``ConnectionFailed`` when the server can't be reached."""
        return await self._run(self._flows.health())

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def close(self) -> None:
        """The same as ``aclose()``, named like ``Client.close``."""
        await self.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    response = await self._http.send(step.request)
                except httpx.TransportError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(response)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            flow.close()


async def _load(image: ImageInput) -> bytes | str:
    # Reading a file blocks; keep it off the event loop.
    return load_image(image) if is_loaded(image) else await asyncio.to_thread(load_image, image)
