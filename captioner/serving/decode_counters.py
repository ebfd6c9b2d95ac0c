"""What continuous batching reports, counted: the metrics (``captioner_decode_rows``, ``..._steps_total``, time to
first token, images) and the model's health (a failed request counts as a failed batch; all the requests one
failure failed count once, as their batch would have in static mode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from captioner.errors import CaptionerError, ModelError, ModelLost, ModelUnavailable
from captioner.model.process_worker import ModelProcessDied
from captioner.model.protocol import DecodeProgress
from captioner.observability.metrics import Metrics
from captioner.serving.health import ModelHealth


class _HasHealth(Protocol):
    health: ModelHealth


def decode_error(respawn_backoff_s: float) -> Callable[[BaseException], BaseException]:
    """The error a caller gets for a request the model side failed (as static mode's ``_timed_batch`` maps it)."""

    def mapped(error: BaseException) -> BaseException:
        if isinstance(error, ModelProcessDied):  # 503 + Retry-After; a job goes back to its queue
            lost = ModelLost(retry_after_s=max(1.0, respawn_backoff_s))
            lost.__cause__ = error
            return lost
        if isinstance(error, CaptionerError):
            return error
        wrapped = ModelError()
        wrapped.__cause__ = error
        return wrapped

    return mapped


class DecodeCounters:
    def __init__(self, metrics: Metrics, variant: str, owner: _HasHealth) -> None:
        self._rows = metrics.decode_rows.labels(variant)
        self._steps = metrics.decode_steps.labels(variant)
        self._first_token = metrics.decode_first_token_seconds.labels(variant)
        self._images = metrics.images.labels(variant)
        self._owner = owner  # its health is built after the batcher that reports here
        self._last_steps = 0
        self._last_failure: BaseException | None = None

    def answered(self, first_token_s: float) -> None:
        self._images.inc()
        self._first_token.observe(first_token_s)
        self._last_failure = None
        self._owner.health.batch_succeeded()

    def failed(self, error: BaseException) -> None:
        cause = error.__cause__ if isinstance(error, ModelError) and error.__cause__ is not None else error
        if isinstance(error, ModelUnavailable) or cause is self._last_failure:
            return  # a lost model is handled by its respawn; one failure of many requests counts once
        self._last_failure = cause
        self._owner.health.batch_failed(cause)

    def progress(self, progress: DecodeProgress) -> None:
        self._rows.set(progress.rows)
        # A respawned model process counts from 0 again.
        added = progress.steps - self._last_steps if progress.steps >= self._last_steps else progress.steps
        self._steps.inc(added)
        self._last_steps = progress.steps
