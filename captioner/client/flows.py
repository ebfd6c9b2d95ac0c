"""Everything the two clients share: building requests, retrying, polling and parsing, without any I/O.

Each API call is a generator (a "flow") that yields the steps it needs, ``Send(request)`` or ``Sleep(s)``, and
is sent back each response (or has the transport error thrown into it). ``Client`` performs the steps
blocking and ``AsyncClient`` awaiting them; that is the only difference between the two. httpx's own
``Auth.auth_flow`` serves its sync and async clients the same way.

Retries: 429 and 503 (the server refused before doing any work) are retried after their ``Retry-After``; a
connection that was never made is retried for any call; one that broke after the request may have gone out
(reset, read timeout) only for GETs and for POSTs that carry an ``Idempotency-Key``, which the server (and nginx,
which then replays them too) deduplicates on. ``caption`` and ``submit`` always carry one: a fresh random key per
call, the same on each of its retries (or the caller's own). ``feedback`` has none: a repeat would count twice.

Every wait is jittered ("full jitter"): a random share of the exponential backoff, on top of ``Retry-After`` when
the server sent one, so clients refused together don't come back together. Every call's waits together stay
under ``max_wait_s``.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from captioner import __version__
from captioner.client.errors import (
    ConnectionFailed,
    JobNotDone,
    UnexpectedResponse,
    api_error,
    error_body,
    error_from_response,
)
from captioner.client.results import CaptionResult, Job

T = TypeVar("T")

API_KEY_ENV = "CAPTIONER_API_KEY"
CAPTION_PATH = "/api/v1/caption"
JOB_PATH = "/api/v1/caption/{job_id}"
FEEDBACK_PATH = "/api/v1/feedback"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_STATUSES = frozenset({429, 503})
# Errors raised before any byte of the request left: safe to retry whatever the call does.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
POLL_INTERVAL_S = 1.0  # between job polls when the server doesn't say (it sends Retry-After: 1)

ImageInput: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


Flow: TypeAlias = Generator[Send | Sleep, Any, T]


@dataclass(frozen=True)
class RetryEvent:
    """Given to ``on_retry`` before each wait: the attempt that failed, why, and the wait before the next."""

    method: str
    url: str
    attempt: int  # 1 for the first try
    delay_s: float
    status_code: int | None  # 429 or 503; None after a connection error
    reason: str


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3  # retries after the first attempt
    max_wait_s: float = 60.0  # all waits of one call together; a longer Retry-After is raised to the caller
    backoff_s: float = 0.5  # the backoff's first ceiling (doubling per attempt): see ``delay``
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)  # uniform in [0, 1)

    def delay(self, attempt: int, waited_s: float, retry_after_s: float | None) -> float | None:
        """How long to wait before retrying after failed attempt number ``attempt``; None: don't retry.

        Full jitter: a uniform draw in [0, ``backoff_s`` x 2^(attempt-1)), added to ``Retry-After`` when the
        server sent one (it is a floor: never retried sooner). The draw is cut to what is left of ``max_wait_s``;
        a ``Retry-After`` that doesn't fit in it is not waited for at all.
        """
        if attempt > self.max_retries:
            return None
        left = self.max_wait_s - waited_s
        floor = retry_after_s or 0.0
        if floor > left or (retry_after_s is None and left <= 0):
            return None
        jitter: float = self.backoff_s * 2.0 ** (attempt - 1) * self.rand()
        return floor + min(jitter, left - floor)


@dataclass(frozen=True)
class Call:
    """One API request as data, built into a fresh ``httpx.Request`` for every attempt."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    json: Any = None
    idempotent: bool = True  # may be re-sent after a connection broke mid-request (GETs; POSTs with a key)
    retries: bool = True  # False for probes, which report the present


def is_url(image: object) -> bool:
    return isinstance(image, str) and image[:8].lower().startswith(("http://", "https://"))


def is_loaded(image: object) -> bool:
    """True when ``load_image`` has nothing to read (so an async caller needs no thread for it)."""
    return isinstance(image, bytes | bytearray | memoryview) or is_url(image)


def load_image(image: ImageInput) -> bytes | str:
    """What to send: the image's bytes, or an http(s) URL as given (the server fetches it). Reads files."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str) and is_url(image):
        return image
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    data = image.read()
    if not isinstance(data, bytes):
        raise TypeError("open image files in binary mode ('rb')")
    return data


def retry_after_s(response: httpx.Response) -> float | None:
    """The response's Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ApiFlows:
    """The API's calls as flows, for one server, key and retry policy."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        retry: RetryPolicy,
        headers: dict[str, str] | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        new_key: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        """``new_key`` makes the ``Idempotency-Key`` of a ``caption`` or ``submit`` the caller gave none."""
        self.base_url = base_url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)  # "" turns the variable off
        self.headers = {"User-Agent": f"captioner-client/{__version__}", "Accept": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.headers.update(headers or {})
        self.timeout = httpx.Timeout(timeout)
        self.retry = retry
        self.on_retry = on_retry
        self.new_key = new_key

    # -- the API -----------------------------------------------------------------------------------

    def caption(
        self, image: bytes | str, num_captions: int | None, *, idempotency_key: str | None = None
    ) -> Flow[CaptionResult]:
        # With its key, a caption re-sent after a read timeout is answered once: an api-role replica waits on the
        # first request's job instead of queueing the image again, and nginx may replay it on another replica.
        body = yield from self._json(_caption_call(image, num_captions, None, self._key(idempotency_key)))
        return CaptionResult.from_body(body)

    def submit(
        self, image: bytes | str, num_captions: int | None, *, idempotency_key: str | None, callback_url: str | None
    ) -> Flow[Job]:
        params = {"mode": "async"}
        if callback_url is not None:
            params["callback_url"] = callback_url
        # The server makes one job per key however often the POST arrives, so a POST re-sent after a broken
        # connection can't make a second job. One key per call (all its retries), unless the caller gave one.
        body = yield from self._json(_caption_call(image, num_captions, params, self._key(idempotency_key)))
        return Job.from_body(body)

    def result(self, job_id: str, *, wait: bool, timeout: float | None) -> Flow[CaptionResult]:
        deadline = None if timeout is None else time.monotonic() + timeout
        call = Call("GET", JOB_PATH.format(job_id=quote(job_id, safe="")))
        while True:
            response = yield from self.send(call)
            body = _json_body(response)
            status = body.get("status")
            if status == "success":
                return CaptionResult.from_body(body)
            if status == "error":
                code, message = error_body(body) or ("internal_error", "the job failed")
                raise api_error(code, message)  # the status the same request would have got synchronously
            if status != "processing":
                raise UnexpectedResponse(f"a job in an unknown state: {body!r:.200}")
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                raise JobNotDone(job_id)
            delay = max(0.1, retry_after_s(response) or POLL_INTERVAL_S)
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            yield Sleep(delay)

    def feedback(
        self, *, image_sha256: str | None, job_id: str | None, caption: str, rating: int, correction: str | None
    ) -> Flow[None]:
        if (image_sha256 is None) == (job_id is None):
            raise ValueError("feedback needs exactly one of image_sha256 and job_id")
        payload: dict[str, Any] = {"caption": caption, "rating": rating}
        if image_sha256 is not None:
            payload["image_sha256"] = image_sha256
        if job_id is not None:
            payload["job_id"] = job_id
        if correction is not None:
            payload["correction"] = correction
        yield from self._json(Call("POST", FEEDBACK_PATH, json=payload, idempotent=False))

    def health(self) -> Flow[dict[str, Any]]:
        return (yield from self._json(Call("GET", "/healthz", retries=False)))

    # -- the machinery -----------------------------------------------------------------------------

    def send(self, call: Call) -> Flow[httpx.Response]:
        """Send ``call``, retrying what may be retried; the last response, whatever its status."""
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            request = self.build(call)
            try:
                response: httpx.Response = yield Send(request)
            except httpx.TransportError as exc:
                retryable = call.retries and (call.idempotent or isinstance(exc, NOT_SENT))
                delay = self.retry.delay(attempt, waited, None) if retryable else None
                if delay is None:
                    raise ConnectionFailed(f"{call.method} {request.url}: {type(exc).__name__}: {exc}") from exc
                status, reason = None, f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUSES or not call.retries:
                    return response
                delay = self.retry.delay(attempt, waited, retry_after_s(response))
                if delay is None:
                    return response  # the caller raises its error, with the server's Retry-After on it
                status, reason = response.status_code, response.reason_phrase
            if self.on_retry is not None:
                self.on_retry(RetryEvent(call.method, str(request.url), attempt, delay, status, reason))
            yield Sleep(delay)
            waited += delay

    def build(self, call: Call) -> httpx.Request:
        return httpx.Request(
            call.method,
            self.base_url + call.path,
            params=call.params,
            headers={**self.headers, **call.headers},
            content=call.content,
            json=call.json,
            extensions={"timeout": self.timeout.as_dict()},
        )

    def _key(self, given: str | None) -> dict[str, str]:
        """The ``Idempotency-Key`` header of one call: the caller's key, or a fresh one."""
        key = given or self.new_key()
        return {IDEMPOTENCY_HEADER: key} if key else {}

    def _json(self, call: Call) -> Flow[dict[str, Any]]:
        response = yield from self.send(call)
        return _json_body(response)


def _caption_call(
    image: bytes | str, num_captions: int | None, params: dict[str, str] | None, headers: dict[str, str]
) -> Call:
    """A caption POST; re-sendable after a broken connection only with its ``Idempotency-Key``."""
    idempotent = bool(headers.get(IDEMPOTENCY_HEADER))
    query = dict(params or {})
    if num_captions is not None:
        query["num_captions"] = str(num_captions)  # a query parameter works for every body type
    if isinstance(image, str):
        return Call("POST", CAPTION_PATH, query, dict(headers), json={"url": image}, idempotent=idempotent)
    # The raw bytes: no base64 or multipart overhead. The server reads the image type from its magic bytes.
    raw_headers = {**headers, "Content-Type": "application/octet-stream"}
    return Call("POST", CAPTION_PATH, query, raw_headers, content=image, idempotent=idempotent)


def _json_body(response: httpx.Response) -> dict[str, Any]:
    """The body of a successful response; the typed error for an error response."""
    if response.is_error:
        raise error_from_response(response, retry_after_s(response))
    try:
        body = response.json()
    except ValueError as exc:
        status = response.status_code
        raise UnexpectedResponse(f"HTTP {status} with a body that isn't JSON: is this a captioner server?") from exc
    if not isinstance(body, dict):
        raise UnexpectedResponse(f"HTTP {response.status_code} with JSON that isn't an object: {body!r:.200}")
    return body
