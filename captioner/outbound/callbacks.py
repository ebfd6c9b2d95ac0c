"""Job callbacks: POST a finished job's body to its ``callback_url``, signed, through the outbound client.

- The body is the job's result exactly as ``GET /api/v1/caption/{job_id}`` answers it (JSON, with ``job_id``).
- ``X-Captioner-Signature: sha256=<hex>`` is the HMAC-SHA256 of the raw body under ``jobs.callback_secret``:
  receivers recompute it and compare in constant time (``hmac.compare_digest``). ``X-Captioner-Job-Id`` names
  the job. Delivery is at least once (a replica that dies after storing a result but before its callback is
  confirmed has the callback sent again by the replica that takes the job over), so receivers dedupe on it.
- Sent by ``delivery.post_with_retries``: any 2xx is delivered; anything else, or no answer within
  ``url_input.timeout_s``, is retried under ``retry.CALLBACK_RETRY`` (5 attempts, full-jitter backoff), then
  given up (``failed``: logged, counted by the worker). Redirects are not followed; the reply is not read.
  ``deliver`` never raises.
- The URL is held to the URL-input policy (``url_input.allow_private_networks``): its host's form when the
  job is submitted (``validate_callback_url``: 422), its scheme and literal address too (``check``: 400), its
  DNS at each attempt, and the request goes to the address that was checked.
The secret is never logged, nor the URL (its path and query may carry the receiver's own tokens).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random

import httpx

from captioner.errors import InvalidRequest
from captioner.outbound.client import OutboundClient
from captioner.outbound.delivery import Outcome, Sleep, post_with_retries
from captioner.outbound.policy import check_address, host_problem, parse_url
from captioner.outbound.retry import CALLBACK_RETRY, RetryRule, Rng

logger = logging.getLogger("captioner.callbacks")

SIGNATURE_HEADER = "X-Captioner-Signature"
JOB_ID_HEADER = "X-Captioner-Job-Id"


def sign(secret: str, body: bytes) -> str:
    """The ``X-Captioner-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def validate_callback_url(url: str) -> None:
    """``InvalidRequest`` (422) for a ``callback_url`` whose host no request could ever reach.

    Refused: what is not a URL at all, an empty host, and host names that cannot be looked up (an empty label
    as in ``a..b.example``, a label over 63 characters, a name over 253, characters no host name has). The
    scheme and the addresses are the SSRF policy's business (``CallbackSender.check``: 400 url_not_allowed).
    """
    try:
        host = httpx.URL(url).raw_host.decode("ascii")
    except (httpx.InvalidURL, TypeError, UnicodeError):
        raise InvalidRequest("'callback_url' is not a valid URL") from None
    if ":" in host:
        return  # an IPv6 literal, not a name: the policy reads it
    problem = host_problem(host)
    if problem is not None:
        raise InvalidRequest(f"'callback_url' cannot be called: its host {problem}")


class CallbackSender:
    def __init__(
        self,
        secret: str,
        client: OutboundClient,
        *,
        allow_private: bool,
        timeout_s: float,
        retry: RetryRule = CALLBACK_RETRY,
        rng: Rng | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not secret:
            raise ValueError("callbacks need a secret to sign them")
        self._secret = secret
        self._client = client
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.retry = retry
        self._rng = rng or random.Random()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"CallbackSender(allow_private={self.allow_private}, attempts={self.retry.attempts})"  # no secret

    def check(self, url: str) -> None:
        """At submission: ``UrlNotAllowed`` for a URL no attempt could ever send to (its DNS is checked later)."""
        target = parse_url(url)
        if target.literal is not None:
            check_address(target.literal, allow_private=self.allow_private)

    async def deliver(self, url: str, body: bytes, job_id: str) -> Outcome:
        """POST ``body`` to ``url``, retried; the outcome, never an exception."""
        headers = {
            "Content-Type": "application/json",
            "Accept": "*/*",
            SIGNATURE_HEADER: sign(self._secret, body),
            JOB_ID_HEADER: job_id,
        }
        delivery = await post_with_retries(
            self._client, url, body, headers=headers, allow_private=self.allow_private, timeout_s=self.timeout_s,
            rule=self.retry, rng=self._rng, sleep=self._sleep,
        )  # fmt: skip
        if delivery.outcome == "refused":
            logger.warning("job %s: callback refused: %s", job_id, delivery.problem)
        elif delivery.outcome == "failed":
            logger.warning(
                "job %s: callback given up after %d attempts (last: %s)", job_id, delivery.attempts, delivery.problem
            )
        return delivery.outcome
