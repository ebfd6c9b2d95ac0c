"""Drift -> retraining: send the drift report to the webhook once per alert episode.

An episode starts when some feature's PSI rises over ``drift.psi_alert`` and ends when no feature is over it any
more (checked every ``recheck_s``); the webhook is called once at its start, however many features alert and
however often. Sending (SSRF policy, retries, the shared outbound cap) is ``outbound/webhook.py``'s business;
``captioner_drift_webhooks_total{outcome}`` counts each episode's outcome: sent, failed or refused.

The body: ``{"event": "drift_alert", "feature": ..., "psi": ..., "time": ..., "report": <GET /api/v1/drift>}``.

Each replica scores drift on its own traffic, so in a fleet every replica sees the same shift and starts its own
episode. With a shared ``FleetEpisode`` (Redis: shared_state/fleet_episode.py) only the replica that begins the
fleet's episode calls; the others stay in it without calling, keeping it alive while they alert, and the next
call comes once no replica has alerted for the episode's TTL. If Redis can't answer, this replica calls anyway:
a duplicate retraining request is cheaper than a lost one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import orjson

from captioner.observability.metrics import Metrics
from captioner.outbound.webhook import WebhookSender
from captioner.rollout.drift_watch import DriftWatch

logger = logging.getLogger("captioner.drift")

# The series kept the labels it had before sending moved to outbound/: dashboards read "sent".
_METRIC_OUTCOME = {"delivered": "sent", "failed": "failed", "refused": "refused"}
FLEET_EPISODE_KEY = "captioner:drift:episode:v1"  # the Redis key of the fleet's alert episode


class FleetEpisode(Protocol):
    """An alert episode shared by the replicas (shared_state/fleet_episode.py); may raise when unreachable."""

    async def begin(self) -> bool:
        """True if this replica started the fleet's episode (and calls the webhook)."""

    async def keep(self) -> None:
        """This replica still alerts: the fleet's episode goes on."""

    async def aclose(self) -> None: ...


class DriftAlert:
    def __init__(
        self,
        watch: DriftWatch,
        webhook: WebhookSender,
        metrics: Metrics,
        *,
        recheck_s: float = 5.0,
        fleet: FleetEpisode | None = None,
    ) -> None:
        self._watch = watch
        self._webhook = webhook
        self._metrics = metrics
        self._recheck_s = recheck_s
        self._fleet = fleet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._episode: asyncio.Task[None] | None = None
        watch.add_alert_listener(self.on_alert)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def aclose(self) -> None:
        if self._episode is not None:
            self._episode.cancel()
        if self._fleet is not None:
            await self._fleet.aclose()

    def on_alert(self, feature: str, psi: float) -> None:
        """The drift monitor's callback, on whichever thread observed the value: hand it to the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin, feature, psi)

    def _begin(self, feature: str, psi: float) -> None:
        if self._episode is not None and not self._episode.done():
            return  # this episode has had its call
        self._episode = asyncio.create_task(self._run_episode(feature, psi), name="captioner-drift-webhook")

    async def _run_episode(self, feature: str, psi: float) -> None:
        try:
            if await self._fleet_call():
                report = await asyncio.to_thread(self._watch.report)
                body = {"event": "drift_alert", "feature": feature, "psi": psi, "time": time.time(), "report": report}
                await self._send(orjson.dumps(body))
            while await asyncio.to_thread(self._watch.alerting):
                await self._fleet_keep()
                await asyncio.sleep(self._recheck_s)
        except Exception:  # never a crash of the server; the next alert starts a new episode
            logger.exception("drift webhook episode failed")
            return
        logger.info("drift alert episode over: no feature is over drift.psi_alert", extra={"event": "drift_clear"})

    async def _fleet_call(self) -> bool:
        """Whether this replica calls for this episode: it began the fleet's (or there is no fleet to ask)."""
        if self._fleet is None:
            return True
        try:
            began = await self._fleet.begin()
        except Exception:
            logger.warning("drift alert: the fleet's episode could not be checked (Redis); calling from here")
            return True
        if not began:
            logger.info(
                "drift alert: another replica called the webhook for this episode", extra={"event": "drift_shared"}
            )
        return began

    async def _fleet_keep(self) -> None:
        if self._fleet is None:
            return
        try:
            await self._fleet.keep()
        except Exception:  # the episode may lapse; the next alert then calls once more (not never)
            logger.debug("drift alert: could not renew the fleet's episode", exc_info=True)

    async def _send(self, body: bytes) -> None:
        delivery = await self._webhook.send(body)
        outcome = _METRIC_OUTCOME[delivery.outcome]
        self._metrics.drift_webhooks.labels(outcome).inc()
        extra: dict[str, Any] = {"event": "drift_webhook", "outcome": outcome}
        if outcome == "sent":
            logger.warning("drift alert: webhook called (retraining may start)", extra=extra)
        else:
            logger.error("drift alert: webhook %s (%s)", outcome, delivery.problem, extra=extra)
