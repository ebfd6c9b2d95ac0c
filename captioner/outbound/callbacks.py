"""Job callbacks: POST a finished job's body to its ``callback_url``, signed, retried, under the SSRF policy.

- The body is the job's result exactly as ``GET /api/v1/caption/{job_id}`` answers it (JSON, with ``job_id``).
- ``X-Captioner-Signature: sha256=<hex>`` is the HMAC-SHA256 of the raw body under ``jobs.callback_secret``:
  receivers recompute it and compare in constant time (``hmac.compare_digest``). ``X-Captioner-Job-Id`` names
  the job. Delivery is at least once (a replica that dies after storing a result but before its callback is
  confirmed has the callback sent again by the replica that takes the job over), so receivers dedupe on it.
- Any 2xx is delivered; anything else, or no answer, is retried after 0.5, 1, 2, 4 s (5 attempts in all), then
  given up (logged, counted). Redirects are not followed.
- The URL must pass the URL-input policy (``url_input.allow_private_networks``): its form when the job is
  submitted (``check``), its DNS at each attempt, and the request goes to the address that was checked.
The secret is never logged, nor the URL's path and query (they may carry the receiver's own tokens).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import httpx

from captioner import __version__
from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.outbound.policy import (
    Resolver,
    check_address,
    parse_url,
    pinned_request,
    resolve_checked,
    system_resolver,
)

logger = logging.getLogger("captioner.callbacks")

SIGNATURE_HEADER = "X-Captioner-Signature"
JOB_ID_HEADER = "X-Captioner-Job-Id"
Outcome = Literal["delivered", "failed", "refused"]


def sign(secret: str, body: bytes) -> str:
    """The ``X-Captioner-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class CallbackSender:
    def __init__(
        self,
        secret: str,
        *,
        allow_private: bool,
        timeout_s: float,
        attempts: int = 5,
        first_delay_s: float = 0.5,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not secret:
            raise ValueError("callbacks need a secret to sign them")
        self._secret = secret
        self.allow_private = allow_private
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self._resolver = resolver
        self._sleep = sleep
        self._timeout = httpx.Timeout(timeout_s)
        transport = transport or httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        # trust_env=False: a proxy from the environment would do its own DNS and undo the address check.
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)

    def __repr__(self) -> str:
        return f"CallbackSender(allow_private={self.allow_private}, attempts={self.attempts})"  # no secret

    def check(self, url: str) -> None:
        """At submission: ``UrlNotAllowed`` for a URL no attempt could ever send to (its DNS is checked later)."""
        target = parse_url(url)
        if target.literal is not None:
            check_address(target.literal, allow_private=self.allow_private)

    async def deliver(self, url: str, body: bytes, job_id: str) -> Outcome:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"captioner/{__version__}",
            SIGNATURE_HEADER: sign(self._secret, body),
            JOB_ID_HEADER: job_id,
        }
        delay = self.first_delay_s
        last = "no attempt"
        for attempt in range(1, self.attempts + 1):
            try:
                status = await self._attempt(url, body, headers)
            except CaptionerError as problem:
                if problem.code == "url_not_allowed":  # the policy said no: retrying won't change that
                    logger.warning("job %s: callback refused: %s", job_id, problem.message)
                    return "refused"
                last = problem.message  # DNS failed: may be transient
            else:
                if 200 <= status < 300:
                    return "delivered"
                last = f"HTTP {status}"
            if attempt < self.attempts:
                await self._sleep(delay)
                delay *= 2
        logger.warning("job %s: callback given up after %d attempts (last: %s)", job_id, self.attempts, last)
        return "failed"

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """One POST; the status code, or 0 when no answer came (connection refused, timeout)."""
        target = parse_url(url)
        addresses = await resolve_checked(target, self._resolver, allow_private=self.allow_private)
        for address in addresses:
            request = pinned_request("POST", target, address, headers=headers, timeout=self._timeout, content=body)
            try:
                response = await self._client.send(request)
            except httpx.ConnectError:
                continue  # the next address, if any
            except httpx.HTTPError:
                return 0
            await response.aclose()
            return response.status_code
        return 0

    async def aclose(self) -> None:
        await self._client.aclose()


def build_callback_sender(settings: Settings) -> CallbackSender | None:
    """Signed with ``jobs.callback_secret``, under the URL-input policy; None without a secret."""
    if not settings.jobs.callback_secret:
        return None
    url_input = settings.url_input
    return CallbackSender(
        settings.jobs.callback_secret, allow_private=url_input.allow_private_networks, timeout_s=url_input.timeout_s
    )
