"""Where ``captioner caption`` and ``captioner eval`` get their captions: the model in this process, or a server.

``LocalBackend`` is the server's own data path without the HTTP layer: ``CaptionService`` (hash, cache,
preprocessing threads, the dynamic ``Batcher``, one model thread) over ``BlipCaptioner``. Files are fed to it
from a window of ``2 x batch size`` concurrent requests, so each ``generate`` call gets a full batch while the
next one is being decoded, exactly as under load on the server, and the captions are the server's.

``ServerBackend`` posts each file to ``POST /api/v1/caption`` of a running server over a pool of keep-alive
connections. It honours ``Retry-After`` on 429/503 and retries transport errors a few times with backoff, so a
rolling restart or a busy server slows a long batch down rather than failing it.

Either way a file that can't be captioned raises ``FileFailed`` (with the API's error code), and the caller
records it and goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from captioner import __version__
from captioner.config import Settings
from captioner.errors import CaptionerError, TooLarge
from captioner.model.weights import WeightsUnavailable
from captioner.observability.metrics import Metrics
from captioner.tools.caption_output import CaptionRecord, ScoredCaption

if TYPE_CHECKING:
    from captioner.serving.service import CaptionService

# Offline, nothing waits on a client: a request may queue behind many batches on a slow CPU.
OFFLINE_REQUEST_TIMEOUT_S = 7 * 24 * 3600.0
_MAX_RETRY_WAIT_S = 30.0


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
        if size > max_bytes:
            raise TooLarge(f"the file is {size} bytes; limits.max_body_bytes is {max_bytes}")
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
        self.max_retries = max_retries
        self._max_bytes = max_bytes
        headers = {"User-Agent": f"captioner-batch/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def check(self) -> None:
        """Fail fast, with one clear line, when the server can't be reached at all."""
        try:
            response = await self._client.get("/healthz")
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"cannot reach the server at {self.url}: {exc or type(exc).__name__}") from exc
        if response.status_code != 200:
            raise BackendUnavailable(f"{self.url}/healthz answered HTTP {response.status_code}: is it a captioner?")

    async def caption(self, path: Path) -> CaptionRecord:
        data = await asyncio.to_thread(read_image_file, path, self._max_bytes)
        params = {"num_captions": self.num_captions} if self.num_captions is not None else {}
        headers = {"Content-Type": "application/octet-stream"}
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._client.post("/api/v1/caption", params=params, content=data, headers=headers)
            except httpx.TransportError as exc:
                if last:
                    raise FileFailed("connection_error", f"{type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(min(_MAX_RETRY_WAIT_S, 0.5 * 2**attempt))
                continue
            if response.status_code in (429, 503) and not last:
                await asyncio.sleep(_retry_after(response, attempt))
                continue
            return self._record(path, response)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _record(self, path: Path, response: httpx.Response) -> CaptionRecord:
        try:
            body: Any = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and "code" in error:
                raise FileFailed(str(error["code"]), str(error.get("message", "")))
            raise FileFailed(f"http_{response.status_code}", response.text[:200].strip() or "no body")
        self.model = str(body.get("model", self.model))
        captions = [ScoredCaption(str(c["text"]), float(c["confidence"])) for c in body.get("captions", [])]
        return CaptionRecord(str(path), captions, str(body.get("image_sha256", "")), self.model)

    async def aclose(self) -> None:
        await self._client.aclose()


def _retry_after(response: httpx.Response, attempt: int) -> float:
    value = response.headers.get("Retry-After", "")
    wait = float(value) if value.isdigit() else 2.0**attempt
    return min(_MAX_RETRY_WAIT_S, max(0.1, wait))


def default_api_key() -> str | None:
    """``CAPTIONER_API_KEY`` from the environment, so the key need not be typed on a command line."""
    return os.environ.get("CAPTIONER_API_KEY") or None
