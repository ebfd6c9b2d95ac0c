"""``build_outbound``: one client (one cap) behind URL input, callbacks and the webhook, each configured as before."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from captioner.config import load_settings
from captioner.observability.metrics import Metrics
from captioner.outbound.build import build_outbound

pytestmark = pytest.mark.anyio


async def test_by_default_only_url_input_is_built() -> None:
    outbound = build_outbound(load_settings(None, {}))
    assert outbound.callbacks is None and outbound.webhook is None
    assert outbound.fetcher._client is outbound.client
    await outbound.aclose()


async def test_callbacks_and_webhook_share_the_one_client_and_the_gauge_counts_it() -> None:
    env = {
        "CAPTIONER_JOBS__CALLBACK_SECRET": "s3cret",
        "CAPTIONER_DRIFT__WEBHOOK_URL": "https://hooks.example/drift",
        "CAPTIONER_DRIFT__WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONER_DRIFT__WEBHOOK_TIMEOUT_S": "7",
        "CAPTIONER_URL_INPUT__TIMEOUT_S": "3",
    }
    metrics = Metrics()
    outbound = build_outbound(load_settings(None, env), metrics)
    assert outbound.callbacks is not None and outbound.webhook is not None
    assert outbound.callbacks._client is outbound.client and outbound.webhook._client is outbound.client
    # Callbacks follow URL input's policy and timeout; the webhook has its own opening and timeout.
    assert (outbound.callbacks.allow_private, outbound.callbacks.timeout_s) == (False, 3)
    assert (outbound.webhook.allow_private, outbound.webhook.timeout_s) == (True, 7)
    outbound.client.in_flight = 2
    assert "captioner_url_fetches_in_flight 2.0" in generate_latest(metrics.registry).decode()
    await outbound.aclose()


async def test_no_webhook_while_drift_monitoring_is_off() -> None:
    env = {"CAPTIONER_DRIFT__WEBHOOK_URL": "https://hooks.example/drift", "CAPTIONER_DRIFT__ENABLED": "false"}
    outbound = build_outbound(load_settings(None, env))
    assert outbound.webhook is None
    await outbound.aclose()
