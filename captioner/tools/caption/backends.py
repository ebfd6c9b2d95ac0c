"""Where ``captioner caption`` and ``captioner eval`` get their captions: the model in this process, or a server.

``LocalBackend`` is the server's own data path without the HTTP layer: ``CaptionService`` (hash, cache,
preprocessing threads, the dynamic ``Batcher``, one model thread) over ``BlipCaptioner``. Files are fed to it
from a window of ``2 x batch size`` concurrent requests, so each ``generate`` call gets a full batch while the
next one is being decoded, exactly as under load on the server, and the captions are the server's.

``ServerBackend`` posts each file to ``POST /api/v1/caption`` of a running server with the public client
(``captioner.client``) over a pool of keep-alive connections. It honours ``Retry-After`` on 429/503 and retries
connection errors a few times with backoff, so a rolling restart or a busy server slows a long batch down
rather than failing it.

Either way a file that can't be captioned raises ``FileFailed`` (with the API's error code), and the caller
records it and goes on.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

from captioner import __version__
from captioner.client import ApiError, AsyncClient, CaptionerClientError, ConnectionFailed, UnexpectedResponse
from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.model.weights import WeightsUnavailable
from captioner.observability.metrics import Metrics
from captioner.tools.caption.output import CaptionRecord, ScoredCaption

if TYPE_CHECKING:
    from captioner.serving.service import CaptionService

# Offline, nothing waits on a client: a request may queue behind many batches on a slow CPU.
OFFLINE_REQUEST_TIMEOUT_S = 7 * 24 * 3600.0
_MAX_RETRY_WAIT_S = 150.0  # all the waits for one file: five retries of up to 30 s


class FileFailed(Exception):
    """One file could not be captioned; ``code`` is the API's error code (or ``unreadable``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BackendUnavailable(RuntimeError):
    """The backend can't work at all (no weights, server unreachable); the message says what to do."""


class CaptionBackend(Protocol):
    model: str
    concurrency: int

    async def caption(self, path: Path) -> CaptionRecord: ...

    async def aclose(self) -> None: ...


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing (like the server's body cap) files over ``max_bytes`` before reading them."""
    try:
        size = path.stat().st_size
        if size > max_bytes:  # a FileFailed, so that the batch goes on without it
            raise FileFailed("too_large", f"the file is {size} bytes; limits.max_body_bytes is {max_bytes}")
        return path.read_bytes()
    except OSError as exc:
        raise FileFailed("unreadable", exc.strerror or str(exc)) from exc


def offline_settings(settings: Settings, batch_size: int | None) -> Settings:
    """The server's settings, with the batch size asked for and a queue that holds the feeding window."""
    size = batch_size or settings.batching.max_batch_size
    return settings.replace(
        "batching",
        max_batch_size=size,
        max_queue=max(settings.batching.max_queue, 2 * size),
        request_timeout_s=OFFLINE_REQUEST_TIMEOUT_S,
    )


class LocalBackend:
    def __init__(self, service: CaptionService, settings: Settings, num_captions: int) -> None:
        self.service = service
        self.model = settings.model.name
        self.num_captions = num_captions
        self.concurrency = 2 * settings.batching.max_batch_size
        self._max_bytes = settings.limits.max_body_bytes

    @classmethod
    async def start(cls, settings: Settings, num_captions: int) -> LocalBackend:
        """Load the model (downloading it first if ``model.path`` is empty) and start the batcher."""
        # torch and transformers: kept off `captioner --help` and `caption --server`
        from captioner.model.loader import load_captioner
        from captioner.serving.service import CaptionService

        try:
            captioner = await asyncio.to_thread(load_captioner, settings)
        except WeightsUnavailable as exc:
            raise BackendUnavailable(str(exc)) from exc
        if captioner.untrained:
            print(
                f"warning: {settings.model.path} is an UNTRAINED model (captioner init-model): "
                "its captions are meaningless",
                file=sys.stderr,
            )
        service = CaptionService(settings, captioner, Metrics())
        service.start()
        return cls(service, settings, num_captions)

    async def caption(self, path: Path) -> CaptionRecord:
        data = await asyncio.to_thread(read_image_file, path, self._max_bytes)
        try:
            outcome = await self.service.caption(data, self.num_captions)
        except CaptionerError as exc:
            raise FileFailed(exc.code, exc.message) from exc
        captions = [ScoredCaption(c.text, c.confidence) for c in outcome.captions]
        return CaptionRecord(str(path), captions, outcome.image_sha256, self.model)

    async def aclose(self) -> None:
        await self.service.close(timeout_s=60)


class ServerBackend:
    """Files posted to a running server with ``captioner.client.AsyncClient``, which does the retrying."""

    def __init__(
        self,
        url: str,
        *,
        num_captions: int | None,
        api_key: str | None = None,
        concurrency: int = 8,
        max_bytes: int = 10 * 1024 * 1024,
        timeout_s: float = 120.0,
        max_retries: int = 5,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = "unknown"  # the server names it in every response
        self.concurrency = concurrency
        self.num_captions = num_captions
        self._max_bytes = max_bytes
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        )
        self._client = AsyncClient(
            self.url,
            api_key=api_key or "",  # "": exactly the key given, none when none
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            max_retries=max_retries,
            max_retry_wait=_MAX_RETRY_WAIT_S,
            headers={"User-Agent": f"captioner-batch/{__version__}"},
            http_client=self._http,
        )

    async def check(self) -> None:
        """Fail fast, with one clear line, when the server can't be reached at all."""
        try:
            await self._client.health()
        except ConnectionFailed as exc:
            raise BackendUnavailable(f"cannot reach the server at {self.url}: {exc.__cause__ or exc}") from exc
        except ApiError as exc:
            raise BackendUnavailable(f"{self.url}/healthz answered HTTP {exc.status_code}: is it a captioner?") from exc
        except UnexpectedResponse:
            pass  # a 200 all the same: whatever answers may still take captions

    async def caption(self, path: Path) -> CaptionRecord:
        data = await asyncio.to_thread(read_image_file, path, self._max_bytes)
        try:
            result = await self._client.caption(data, self.num_captions)
        except CaptionerClientError as exc:
            raise FileFailed(exc.code, exc.message) from exc
        self.model = result.model
        captions = [ScoredCaption(c.text, c.confidence) for c in result.captions]
        return CaptionRecord(str(path), captions, result.image_sha256, self.model)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._http.aclose()


def default_api_key() -> str | None:
    """``CAPTIONER_API_KEY`` from the environment, so the key need not be typed on a command line."""
    return os.environ.get("CAPTIONER_API_KEY") or None
