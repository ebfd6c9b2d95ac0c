"""Drift -> retraining webhook: one POST of the drift report per alert episode (``rollout/drift_alert.py``), sent
through the outbound client under the URL input's SSRF policy and the one retry rule (``outbound/webhook.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from captioner.observability.metrics import Metrics
from captioner.outbound.client import OutboundClient
from captioner.outbound.retry import RetryRule
from captioner.outbound.webhook import WebhookSender
from captioner.rollout.drift_alert import DriftAlert
from tests.support.drift import FAST, send
from tests.support.images import dark_tiny, normal_photo
from tests.support.metrics import metric_value
from tests.support.model import tiny_settings
from tests.support.receiver import Receiver
from tests.support.servers import LiveServer
from tests.support.waits import async_wait_for as wait_for


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver([200]) as running:
        yield running


class FakeWatch:
    def __init__(self) -> None:
        self.alert = True
        self.listeners: list[Any] = []

    def add_alert_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def report(self) -> dict[str, Any]:
        return {"enabled": True, "features": {"width": {"psi": 3.2, "alert": self.alert}}}

    def alerting(self) -> bool:
        return self.alert


class Alert(DriftAlert):
    """The alert with its own outbound client (``build_outbound`` shares one), closed with it."""

    def __init__(self, sender: WebhookSender, client: OutboundClient, watch: FakeWatch, metrics: Metrics) -> None:
        super().__init__(watch, sender, metrics, recheck_s=0.01)  # type: ignore[arg-type]
        self.client = client

    async def aclose(self) -> None:
        await super().aclose()
        await self.client.aclose()


FAST_RETRY = RetryRule(attempts=3, base_s=0.01, cap_s=0.01)


def webhook(url: str, watch: FakeWatch, metrics: Metrics, *, allow_private: bool = True) -> Alert:
    client = OutboundClient(4)
    sender = WebhookSender(client, url, allow_private=allow_private, timeout_s=5, retry=FAST_RETRY)
    return Alert(sender, client, watch, metrics)


@pytest.mark.anyio
async def test_one_call_per_episode_and_a_new_episode_after_the_alert_clears(receiver: Receiver) -> None:
    watch, metrics = FakeWatch(), Metrics()
    hook = webhook(receiver.url, watch, metrics)
    hook.start(asyncio.get_running_loop())
    try:
        for feature in ("width", "height", "width", "brightness"):  # many alerts, one episode
            await asyncio.to_thread(watch.listeners[0], feature, 3.2)  # the monitor calls from worker threads
        await wait_for(lambda: len(receiver.bodies) == 1)
        body = receiver.bodies[0]
        assert body["content_type"] == "application/json"
        assert body["json"]["event"] == "drift_alert" and body["json"]["feature"] == "width"
        assert body["json"]["report"]["features"]["width"]["psi"] == 3.2
        watch.listeners[0]("height", 2.0)
        await asyncio.sleep(0.1)
        assert len(receiver.bodies) == 1  # still the same episode: the alert has not cleared
        watch.alert = False
        await wait_for(lambda: hook._episode is not None and hook._episode.done())
        watch.alert = True
        watch.listeners[0]("height", 2.5)
        await wait_for(lambda: len(receiver.bodies) == 2)
        assert receiver.bodies[1]["json"]["feature"] == "height"
        # Counted once the receiver's answer is back, a moment after the receiver has the body.
        await wait_for(lambda: metric_value(_text(metrics), "captioner_drift_webhooks_total", 'outcome="sent"') >= 2)
        await asyncio.sleep(0.1)
        assert metric_value(_text(metrics), "captioner_drift_webhooks_total", 'outcome="sent"') == 2
    finally:
        await hook.aclose()


@pytest.mark.anyio
async def test_a_private_address_is_refused_unless_allowed_and_failures_are_retried(receiver: Receiver) -> None:
    metrics = Metrics()
    refused = webhook(receiver.url, FakeWatch(), metrics, allow_private=False)
    refused.start(asyncio.get_running_loop())
    refused.on_alert("width", 3.0)
    await wait_for(lambda: metric_value(_text(metrics), "captioner_drift_webhooks_total", 'outcome="refused"') == 1)
    assert receiver.bodies == []  # the SSRF policy stopped it before any connection
    await refused.aclose()

    receiver.statuses[:] = [500]
    failing = webhook(receiver.url, FakeWatch(), metrics)
    failing.start(asyncio.get_running_loop())
    failing.on_alert("width", 3.0)
    await wait_for(lambda: metric_value(_text(metrics), "captioner_drift_webhooks_total", 'outcome="failed"') == 1)
    assert len(receiver.bodies) == 3  # the first try and two retries
    await failing.aclose()


def test_a_drifting_server_calls_the_webhook_with_its_drift_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    with Receiver([200]) as hook:
        drift = {"reference_size": 20, "window": 20, "min_window": 20, "psi_alert": 0.2,
                 "webhook_url": hook.url, "webhook_allow_private_networks": True}  # fmt: skip
        settings = tiny_settings(tiny_model_dir, generation=FAST, drift=drift)
        with LiveServer(settings) as server:
            send(server.url, [normal_photo(seed) for seed in range(20)])  # the reference
            assert hook.bodies == []
            send(server.url, [dark_tiny(seed) for seed in range(60)])  # a different population
            deadline = time.monotonic() + 60
            while not hook.bodies:
                assert time.monotonic() < deadline, "the webhook was not called"
                time.sleep(0.05)
            send(server.url, [dark_tiny(seed) for seed in range(60, 120)])  # still drifting: same episode
            assert server.metric("captioner_drift_webhooks_total", 'outcome="sent"') == 1
        (call,) = hook.bodies
        report = call["json"]["report"]
        assert report["enabled"] is True and report["psi_alert"] == 0.2
        assert any(feature["alert"] for feature in report["features"].values())


def _text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()
