"""Every failure a client can see, as plain data.

Each error carries its HTTP status and its stable ``code`` (the contract's error table); ``error_response``
below turns one into a response, the only place that does. Code anywhere in the package raises these and
never builds an error response itself: the app's exception handlers and the ASGI gate both call it.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response


class CaptionerError(Exception):
    """Base of every error that maps to an HTTP response."""

    status_code: int = 500
    code: str = "internal_error"
    default_message: str = "internal error"

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.message)

    def to_dict(self) -> dict[str, object]:
        return {"status": "error", "error": {"code": self.code, "message": self.message}}


class InternalError(CaptionerError):
    """A bug: the message stays generic, the traceback goes to the log."""


class InvalidImage(CaptionerError):
    status_code = 400
    code = "invalid_image"
    default_message = "the body is not a readable image"


class InvalidRequest(CaptionerError):
    status_code = 422
    code = "invalid_request"
    default_message = "the request is malformed"


class TooLarge(CaptionerError):
    status_code = 413
    code = "too_large"
    default_message = "the image is too large"


class UnsupportedMediaType(CaptionerError):
    status_code = 415
    code = "unsupported_media_type"
    default_message = "unsupported media type"


class UrlNotAllowed(CaptionerError):
    status_code = 400
    code = "url_not_allowed"
    default_message = "that URL may not be fetched"


class UrlFetchFailed(CaptionerError):
    status_code = 400
    code = "url_fetch_failed"
    default_message = "the URL could not be fetched"


class Unauthorized(CaptionerError):
    status_code = 401
    code = "unauthorized"
    default_message = "a valid API key is required (Authorization: Bearer <key>)"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(CaptionerError):
    status_code = 403
    code = "forbidden"
    default_message = "this key may not call this endpoint (its tenant lacks the scope)"


class NotFound(CaptionerError):
    status_code = 404
    code = "not_found"
    default_message = "not found"


class _RetryableError(CaptionerError):
    """An error the client should retry after ``retry_after_s`` seconds (sent as Retry-After)."""

    def __init__(self, message: str | None = None, *, retry_after_s: float = 1.0) -> None:
        # Retry-After takes whole seconds; round up so a client never comes back too early.
        self.retry_after_s = max(1, int(-(-retry_after_s // 1)))
        super().__init__(message, headers={"Retry-After": str(self.retry_after_s)})


class RateLimited(_RetryableError):
    status_code = 429
    code = "rate_limited"
    default_message = "rate limit exceeded"


class QuotaExceeded(_RetryableError):
    """The tenant's daily image quota (``max_images_per_day``) is spent; Retry-After: until it resets (UTC midnight)."""

    status_code = 429
    code = "quota_exceeded"
    default_message = "the daily image quota is spent"


class Overloaded(_RetryableError):
    status_code = 503
    code = "overloaded"
    default_message = "the server is at capacity, retry later"


class ModelUnavailable(Overloaded):
    """The model can't take work now (its process is restarting, or it keeps failing): retry, here or elsewhere.

    503 ``overloaded`` like a full queue, so a load balancer retries the request on another replica."""

    default_message = "the model is unavailable, retry later"


class ModelLost(ModelUnavailable):
    """The model process died (crashed, killed, or stopped by the watchdog) with this request's batch in it.

    Not 500: the request did nothing wrong that we know of, and another replica (or this one, once its model is
    respawned) can answer it. A job in such a batch goes back to the queue (jobs/worker.py)."""

    default_message = "the model process was lost while captioning this image, retry later"


class RequestTimeout(_RetryableError):
    """The deadline passed before the work was done. With Retry-After: a caller with time left may try again (on
    another replica, or here once the queue is shorter); the work itself was not done, so nothing is repeated."""

    status_code = 504
    code = "timeout"
    default_message = "the request deadline passed before inference"


class BodyTimeout(CaptionerError):
    """The request body did not arrive within ``limits.body_timeout_s``; the connection is closed after this."""

    status_code = 408
    code = "timeout"
    default_message = "the request body did not arrive in time"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Connection": "close"})


class ModelError(CaptionerError):
    """The model failed. The message stays generic; the traceback goes to the log."""

    status_code = 500
    code = "model_error"
    default_message = "the model failed to caption this image"


# Codes of the errors Starlette and uvicorn raise themselves, by status (routing, request heads).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 431: "headers_too_large"}


def error_codes() -> list[str]:
    """Every ``code`` a client can see, for the OpenAPI document."""
    found: list[str] = []
    pending: list[type[CaptionerError]] = [CaptionerError]
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        found.append(cls.code)
    return list(dict.fromkeys([*found, *HTTP_ERROR_CODES.values()]))


def error_from_body(body: Mapping[str, object]) -> CaptionerError:
    """The error an error body describes (a job's stored result, answered synchronously); internal_error if
    the body names no known code."""
    error = body.get("error")
    code = error.get("code") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    pending: list[type[CaptionerError]] = [CaptionerError]
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if cls.code == code and not cls.__name__.startswith("_"):
            return cls(str(message) if message else None)
    return InternalError()


def error_response(error: CaptionerError) -> Response:
    """The contract's error body, status and headers (Retry-After, WWW-Authenticate) for ``error``."""
    return Response(
        orjson.dumps(error.to_dict()),
        status_code=error.status_code,
        headers=error.headers,
        media_type="application/json",
    )
