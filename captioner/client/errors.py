"""What a client call raises: the server's error codes as exception classes, mapped in one table.

Every error has ``code`` and ``message``. ``ApiError`` and its subclasses are answers from the server and also
carry ``status_code``, ``retry_after_s`` and ``request_id`` (quote it when reporting a problem: the server
logs it). An error code the table doesn't know (a newer server) still raises ``ApiError`` with that code.
"""

from __future__ import annotations

from typing import Any

import httpx


class CaptionerClientError(Exception):
    """Base of every error this client raises on purpose."""

    code = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionFailed(CaptionerClientError):
    """No answer: the server could not be reached, or the connection broke, and retrying didn't help."""

    code = "connection_error"


class UnexpectedResponse(CaptionerClientError):
    """A success status with a body that isn't the API's JSON: probably not a captioner server."""

    code = "unexpected_response"


class JobNotDone(CaptionerClientError, TimeoutError):
    """``result()`` stopped waiting while the job was still processing; ask again later."""

    code = "job_not_done"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is still processing")
        self.job_id = job_id


class ApiError(CaptionerClientError):
    """The server answered with an error (the contract's JSON error body, or a proxy's non-JSON one)."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status_code: int,
        retry_after_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"


class InvalidImage(ApiError):
    """Not an image, or a corrupt or truncated one."""


class InvalidRequest(ApiError):
    """A bad parameter: num_captions out of range, bad JSON, bad base64, a missing field."""


class TooLarge(ApiError):
    """The body is over the server's byte limit, or the image over its pixel limit."""


class UnsupportedMediaType(ApiError):
    """An image format or Content-Type the server doesn't read."""


class UrlNotAllowed(ApiError):
    """The server may not fetch that URL (scheme, or a private address)."""


class UrlFetchFailed(ApiError):
    """The server could not fetch the URL (timeout, non-2xx, too many redirects)."""


class Unauthorized(ApiError):
    """A missing or wrong API key."""


class Forbidden(ApiError):
    """This key may not use that endpoint: its tenant lacks the scope (the drift and variants endpoints need admin)."""


class NotFound(ApiError):
    """No such job (expired, or created with another API key), or no such path."""


class RateLimited(ApiError):
    """This key's rate limit, still exceeded after the retries allowed; ``retry_after_s`` says when to return."""


class QuotaExceeded(ApiError):
    """This key's tenant spent its daily image quota; ``retry_after_s`` is the time until it resets (UTC midnight)."""


class Overloaded(ApiError):
    """The server's queue is full or it is draining, still after the retries allowed."""


class RequestTimeout(ApiError):
    """The request's deadline passed before inference (504), or the body arrived too slowly (408)."""


class ModelError(ApiError):
    """The model failed on this image; the server logged why."""


class InternalError(ApiError):
    """A server bug; the server logged the traceback."""


# The contract's error table (DESIGN.md, "Contract: errors"): code -> (exception, the status it comes with).
# The status is used for a failed async job, whose error arrives inside a 200 answer to the poll.
ERRORS: dict[str, tuple[type[ApiError], int]] = {
    "invalid_image": (InvalidImage, 400),
    "invalid_request": (InvalidRequest, 422),
    "too_large": (TooLarge, 413),
    "unsupported_media_type": (UnsupportedMediaType, 415),
    "url_not_allowed": (UrlNotAllowed, 400),
    "url_fetch_failed": (UrlFetchFailed, 400),
    "unauthorized": (Unauthorized, 401),
    "forbidden": (Forbidden, 403),
    "not_found": (NotFound, 404),
    "rate_limited": (RateLimited, 429),
    "quota_exceeded": (QuotaExceeded, 429),
    "overloaded": (Overloaded, 503),
    "timeout": (RequestTimeout, 504),
    "model_error": (ModelError, 500),
    "internal_error": (InternalError, 500),
}


def api_error(
    code: str,
    message: str,
    *,
    status_code: int | None = None,
    retry_after_s: float | None = None,
    request_id: str | None = None,
) -> ApiError:
    """The exception for ``code``; ``status_code`` defaults to the one the contract gives that code."""
    cls, status = ERRORS.get(code, (ApiError, 500))
    return cls(
        message,
        code=code,
        status_code=status if status_code is None else status_code,
        retry_after_s=retry_after_s,
        request_id=request_id,
    )


def error_body(body: Any) -> tuple[str, str] | None:
    """(code, message) from the contract's ``{"status": "error", "error": {...}}`` body, or None."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"], str(error.get("message", ""))
    return None


def error_from_response(response: httpx.Response, retry_after_s: float | None) -> ApiError:
    """The exception for an error response. A body that isn't ours (a proxy's HTML page) gets ``http_<status>``."""
    try:
        parsed = error_body(response.json())
    except ValueError:  # not JSON (json.JSONDecodeError and UnicodeDecodeError are both ValueErrors)
        parsed = None
    code, message = parsed or (f"http_{response.status_code}", response.text[:200].strip() or "no body")
    return api_error(
        code,
        message,
        status_code=response.status_code,
        retry_after_s=retry_after_s,
        request_id=response.headers.get("X-Request-ID"),
    )
