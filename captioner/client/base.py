"""What ``Client`` and ``AsyncClient`` share besides the flows: their settings and the httpx client they own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import httpx

from captioner.client.flows import ApiFlows, RetryEvent, RetryPolicy
from captioner.client.results import Job

H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class ClientBase(Generic[H]):
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        headers: Mapping[str, str] | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        http_client: H | None = None,
    ) -> None:
        """A client of the captioner server at ``base_url`` (e.g. ``http://localhost:8000``).

        - ``api_key``: sent as ``Authorization: Bearer``; None reads ``$CAPTIONER_API_KEY``, "" sends none.
        - ``timeout``: seconds per HTTP request (an ``httpx.Timeout`` for finer control; None for none).
        - ``max_retries``, ``max_retry_wait``: at most this many retries per call, and this many seconds of
          waiting between them in all (429/503 wait their ``Retry-After`` plus a random jitter; connection errors
          a random share of a backoff from 0.5 s, doubling). A 429/503 whose ``Retry-After`` doesn't fit is
          raised as ``RateLimited``/``Overloaded``.
        - ``headers``: added to every request (and override the defaults).
        - ``on_retry``: called with a ``RetryEvent`` before each retry's wait (for logs or metrics).
        - ``http_client``: an httpx client of your own (proxies, TLS, connection limits); you close it.
        """
        self._flows = ApiFlows(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retry=RetryPolicy(max_retries=max_retries, max_wait_s=max_retry_wait),
            headers=dict(headers or {}),
            on_retry=on_retry,
        )
        self._owns_http = http_client is None
        self._http: H = http_client if http_client is not None else self._new_http()

    @property
    def base_url(self) -> str:
        return self._flows.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _new_http(self) -> H:
        raise NotImplementedError


def job_id_of(job: Job | str) -> str:
    return job.job_id if isinstance(job, Job) else job
