"""``build_outbound``: the outbound package's parts from the settings, sharing one client, one cap, one policy.

- ``fetcher``: URL input (``url_input.*``, bodies capped at ``limits.max_body_bytes``);
- ``callbacks``: job callbacks, signed with ``jobs.callback_secret``, under ``url_input``'s policy and timeout;
  None without a secret (``callback_url`` is then refused);
- ``webhook``: the drift webhook to ``drift.webhook_url``, under ``url_input``'s policy (private networks also
  opened by ``drift.webhook_allow_private_networks``) and ``drift.webhook_timeout_s``; None when the URL is
  unset or drift monitoring is off.
Every call of the three waits for one of ``url_input.max_concurrent_fetches`` slots of the one client, whose
in-flight count is ``captioner_url_fetches_in_flight``. ``aclose`` closes the client, at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from captioner.config import Settings
from captioner.observability.metrics import Metrics
from captioner.outbound.callbacks import CallbackSender
from captioner.outbound.client import OutboundClient
from captioner.outbound.policy import Resolver, system_resolver
from captioner.outbound.url_fetch import UrlFetcher
from captioner.outbound.webhook import WebhookSender


@dataclass(frozen=True)
class Outbound:
    client: OutboundClient
    fetcher: UrlFetcher
    callbacks: CallbackSender | None
    webhook: WebhookSender | None

    async def aclose(self) -> None:
        await self.client.aclose()


def build_outbound(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Outbound:
    """The fetcher, callback sender and webhook sender of this process, on one client."""
    url_input, drift = settings.url_input, settings.drift
    client = OutboundClient(url_input.max_concurrent_fetches, resolver=resolver, transport=transport)
    if metrics is not None:
        metrics.url_fetches_in_flight.set_function(lambda: client.in_flight)
    callbacks = None
    if settings.jobs.callback_secret:
        callbacks = CallbackSender(
            settings.jobs.callback_secret, client,
            allow_private=url_input.allow_private_networks, timeout_s=url_input.timeout_s,
        )  # fmt: skip
    webhook = None
    if drift.webhook_url and drift.enabled:
        webhook = WebhookSender(
            client, drift.webhook_url,
            allow_private=url_input.allow_private_networks or drift.webhook_allow_private_networks,
            timeout_s=drift.webhook_timeout_s,
        )  # fmt: skip
    return Outbound(client, UrlFetcher(url_input, client, max_bytes=settings.limits.max_body_bytes), callbacks, webhook)
