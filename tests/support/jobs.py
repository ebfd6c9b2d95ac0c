"""Async jobs over HTTP: submit one (``?mode=async``) and poll until it has ended."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"


class Server(Protocol):
    url: str


def submit_job(server: Server, data: bytes, **kwargs: Any) -> httpx.Response:
    """POST ``data`` as an async job; extra ``headers`` and httpx arguments pass through."""
    headers = {"Content-Type": "image/png", **kwargs.pop("headers", {})}
    return httpx.post(server.url + CAPTION + "?mode=async", content=data, headers=headers, timeout=30, **kwargs)


def job_result(server: Server, job_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """The first answer for the job that is not "processing" (an error status included); every "processing"
    answer on the way must say ``Retry-After: 1``."""

    def ended() -> httpx.Response | None:
        response = httpx.get(f"{server.url}{CAPTION}/{job_id}", headers=headers or {}, timeout=10)
        if response.status_code != 200 or response.json()["status"] != "processing":
            return response
        assert response.headers["retry-after"] == "1"
        return None

    return wait_for(ended, f"job {job_id} to end")
