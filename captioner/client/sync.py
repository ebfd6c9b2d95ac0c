"""``Client``: the blocking client. It performs the flows' steps with ``httpx.Client`` and ``time.sleep``."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx

from captioner.client.base import ClientBase, job_id_of
from captioner.client.flows import Flow, ImageInput, Sleep, load_image
from captioner.client.results import CaptionResult, Job

T = TypeVar("T")
DEFAULT_RESULT_TIMEOUT_S = 300.0


class Client(ClientBase[httpx.Client]):
    """Blocking client of a captioner server; see ``ClientBase.__init__`` for the options.

    ``image`` is bytes, a path (``str`` or ``Path``), a file opened in binary mode, or an ``http(s)://`` URL
    for the server to fetch. Errors are ``captioner.client.errors`` exceptions carrying the server's code.
    """

    def _new_http(self) -> httpx.Client:
        return httpx.Client()

    def caption(
        self, image: ImageInput, num_captions: int | None = None, *, idempotency_key: str | None = None
    ) -> CaptionResult:
        """Caption one image and wait for the answer (``POST /api/v1/caption``).

        Sent with an ``Idempotency-Key`` (``idempotency_key``, or a fresh random one), the same on every retry, so
        a request re-sent after a read timeout is answered once."""
        flow = self._flows.caption(load_image(image), num_captions, idempotency_key=idempotency_key)
        return self._run(flow)

    def submit(
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
            load_image(image), num_captions, idempotency_key=idempotency_key, callback_url=callback_url
        )
        return self._run(flow)

    def result(
        self, job: Job | str, *, wait: bool = True, timeout: float | None = DEFAULT_RESULT_TIMEOUT_S
    ) -> CaptionResult:
        """A job's captions, polling as the server's ``Retry-After`` says until it is done.

        A failed job raises its error (e.g. ``InvalidImage``). ``JobNotDone`` when it is still processing after
        ``timeout`` seconds (None: no limit), or at once with ``wait=False``.
        """
        return self._run(self._flows.result(job_id_of(job), wait=wait, timeout=timeout))

    def feedback(
        self,
        *,
        image_sha256: str | None = None,
        job_id: str | None = None,
        caption: str,
        rating: int,
        correction: str | None = None,
    ) -> None:
        """Rate a caption (1..5, 5 best), with an optional corrected caption (``POST /api/v1/feedback``).

        Name the image by ``image_sha256`` (``CaptionResult.image_sha256``) or the async job by ``job_id``.
        """
        flow = self._flows.feedback(
            image_sha256=image_sha256, job_id=job_id, caption=caption, rating=rating, correction=correction
        )
        self._run(flow)

    def health(self) -> dict[str, Any]:
        """``GET /healthz``, tried once: raises ``ConnectionFailed`` when the server can't be reached."""
        return self._run(self._flows.health())

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    response = self._http.send(step.request)
                except httpx.TransportError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(response)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            flow.close()
