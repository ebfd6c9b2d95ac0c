"""A Python client for the captioner HTTP API, on httpx: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from captioner.client import Client

    with Client("http://localhost:8000") as client:  # API key: api_key=... or $CAPTIONER_API_KEY
        result = client.caption("cat.jpg", num_captions=3)
        print(result.text, result.captions)

It imports nothing of the server (no torch, no transformers). docs/client.md describes the whole API.
"""

from captioner.client.aio import AsyncClient
from captioner.client.errors import (
    ApiError,
    CaptionerClientError,
    ConnectionFailed,
    Forbidden,
    InternalError,
    InvalidImage,
    InvalidRequest,
    JobNotDone,
    ModelError,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    RequestTimeout,
    TooLarge,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    UrlFetchFailed,
    UrlNotAllowed,
)
from captioner.client.flows import RetryEvent
from captioner.client.results import Caption, CaptionResult, Job
from captioner.client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Caption",
    "CaptionResult",
    "CaptionerClientError",
    "Client",
    "ConnectionFailed",
    "Forbidden",
    "InternalError",
    "InvalidImage",
    "InvalidRequest",
    "Job",
    "JobNotDone",
    "ModelError",
    "NotFound",
    "Overloaded",
    "QuotaExceeded",
    "RateLimited",
    "RequestTimeout",
    "RetryEvent",
    "TooLarge",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "UrlFetchFailed",
    "UrlNotAllowed",
]
