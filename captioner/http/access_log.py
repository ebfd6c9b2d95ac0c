"""One structured log line, and the caption metrics, per HTTP request: plain ASGI middleware, outermost.

Each request gets an id: the caller's ``X-Request-ID`` when it is a sane token (at most 128 characters of
``[A-Za-z0-9._~:;=+/@-]``), else a new one; it is echoed in the response's ``X-Request-ID`` header so a caller
can quote it. The line (logger ``captioner.access``) holds the id, method, path, status, error code, latency,
the caller's principal (``key:<id>`` or ``ip:<address>``, set by the API guard) and, for captions, whether
the cache answered, the size of the batch the image went into, the image's bytes, format and dimensions.
Never the image, never a header: the ``Authorization`` key cannot reach the log from here.

Health checks and scrapes (``/healthz``, ``/readyz``, ``/metrics``) are logged at debug level: at one line
each per probe they would drown the requests. Other 5xx answers are logged as warnings.

Because this sits outside everything else, including the API guard, ``captioner_requests_total{status}``,
``captioner_request_seconds`` and ``captioner_errors_total{code}`` count every caption request, also those
refused before the route ran (401, 429). A client that hangs up before its answer counts as status 499.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner.errors import InternalError
from captioner.http import paths
from captioner.observability.metrics import Metrics

if TYPE_CHECKING:
    from captioner.serving.outcome import CaptionOutcome

log = logging.getLogger("captioner.access")

CAPTION_PATH = paths.CAPTION
QUIET_PATHS = frozenset({paths.HEALTHZ, paths.READYZ, paths.METRICS})
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first": counted, never sent
_RECORD = "captioner.request"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._~:;=+/@-]{1,128}$")
_MAX_ERROR_BODY = 4096
# RequestRecord fields logged when a route set them (caption requests set most of them).
_OPTIONAL_FIELDS = ("cached", "batch_size", "image_bytes", "width", "height", "image_format", "num_captions", "variant")


@dataclass
class RequestRecord:
    """What a route learned about its request, for the log line. Routes fill it through ``request_record``."""

    request_id: str
    code: str | None = None
    cached: bool | None = None
    batch_size: int | None = None
    image_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    image_format: str | None = None
    num_captions: int | None = None
    variant: str | None = None

    def note_outcome(self, outcome: CaptionOutcome) -> None:
        self.cached = outcome.cached
        self.batch_size = outcome.batch_size
        self.variant = outcome.variant
        if outcome.info is not None:
            self.width, self.height, self.image_format = outcome.info.width, outcome.info.height, outcome.info.format


def request_record(scope: Scope) -> RequestRecord:
    """This request's record (a throwaway one when the middleware is not installed, as in some unit tests)."""
    record = scope.get(_RECORD)
    return record if isinstance(record, RequestRecord) else RequestRecord(request_id="")


def request_id(scope: Scope) -> str:
    return request_record(scope).request_id


def choose_request_id(header: str | None) -> str:
    if header is not None and _REQUEST_ID.match(header):
        return header
    return os.urandom(16).hex()  # 128 random bits like a uuid4, as 32 hex digits, at a fifth of the cost


def _header(scope: Scope, name: bytes) -> str | None:
    """One request header's value, read from the raw list (cheaper than building a ``Headers`` per request)."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _shown_path(path: str) -> str:
    """The path is the client's: escaped, so a "%0a" in it cannot forge a second line in text logs."""
    return path if path.isascii() and path.isprintable() else path.encode("unicode_escape").decode("ascii")


class RequestObserver:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._by_status: dict[int, Any] = {}  # requests_total's child per status, looked up once

    def _requests_child(self, status: int) -> Any:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.requests.labels(str(status))
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord(choose_request_id(_header(scope, b"x-request-id")))
        scope[_RECORD] = record
        status = 0
        error_body: bytearray | None = None  # captured only for JSON error answers, to read their code

        async def send_with_id(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", record.request_id.encode("ascii")))
                message = {**message, "headers": headers}
                if status >= 400 and Headers(raw=headers).get("content-type", "").startswith("application/json"):
                    error_body = bytearray()
            elif message["type"] == "http.response.body" and error_body is not None:
                error_body += message.get("body", b"")[: _MAX_ERROR_BODY - len(error_body)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED_REQUEST
            raise
        except Exception:
            # The app's error handler (outside us) answers 500 with InternalError's body.
            status = status or InternalError.status_code
            record.code = record.code or InternalError.code
            raise
        finally:
            if record.code is None and error_body is not None:
                record.code = _error_code(bytes(error_body))
            self._finish(scope, record, status, time.perf_counter() - started)

    def _finish(self, scope: Scope, record: RequestRecord, status: int, seconds: float) -> None:
        path: str = scope.get("path", "")
        method: str = scope.get("method", "")
        if path == CAPTION_PATH and method == "POST":
            self._requests_child(status).inc()
            self.metrics.request_seconds.observe(seconds)
            if status >= 400 and status != CLIENT_CLOSED_REQUEST:
                self.metrics.errors.labels(record.code or "unknown").inc()
        level = _level(path, status)
        if not log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "method": method,
            "path": path,
            "status": status,
            "code": record.code,
            "latency_ms": round(seconds * 1000, 2),
        }
        principal = scope.get("state", {}).get("principal")
        if principal is not None:
            fields["principal"] = principal
        for name in _OPTIONAL_FIELDS:
            value = getattr(record, name)
            if value is not None:
                fields[name] = value
        log.log(level, "%s %s %d %.1f ms", method, _shown_path(path), status, seconds * 1000, extra=fields)


def _level(path: str, status: int) -> int:
    if path in QUIET_PATHS:  # a 503 from /readyz while loading or draining is its job, not a problem
        return logging.DEBUG
    return logging.WARNING if status >= 500 else logging.INFO


def _error_code(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
        code = parsed["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None
