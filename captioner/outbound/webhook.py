"""``WebhookSender``: POST JSON to one configured URL (``drift.webhook_url``) through the outbound client.

The URL is held to the URL input's SSRF policy; ``drift.webhook_allow_private_networks`` lets an in-cluster
receiver through without opening URL input to private networks. Each send is retried under
``retry.WEBHOOK_RETRY`` (3 attempts, full-jitter backoff), a refused URL is not, and ``send`` never raises
(``delivery.post_with_retries``). When to send is the caller's decision (``rollout/drift_alert.py``).
"""

from __future__ import annotations

import asyncio
import random

from captioner.outbound.client import OutboundClient
from captioner.outbound.delivery import Delivery, Sleep, post_with_retries
from captioner.outbound.retry import WEBHOOK_RETRY, RetryRule, Rng


class WebhookSender:
    def __init__(
        self,
        client: OutboundClient,
        url: str,
        *,
        allow_private: bool,
        timeout_s: float,
        retry: RetryRule = WEBHOOK_RETRY,
        rng: Rng | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._client = client
        self._url = url
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.retry = retry
        self._rng = rng or random.Random()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"WebhookSender(allow_private={self.allow_private})"  # the URL may carry the receiver's token

    async def send(self, body: bytes) -> Delivery:
        """POST ``body`` (JSON), retried; the delivery's outcome, never an exception."""
        return await post_with_retries(
            self._client, self._url, body, headers={"Content-Type": "application/json", "Accept": "*/*"},
            allow_private=self.allow_private, timeout_s=self.timeout_s, rule=self.retry, rng=self._rng,
            sleep=self._sleep,
        )  # fmt: skip
