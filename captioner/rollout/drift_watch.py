"""The drift monitor (``observability/psi.py``) wired into the server: what is observed, when, and how it is read out.

- Inputs are observed after a successful decode, on the preprocessing thread that decoded them (the features
  come from ``PreparedImage.sample``, a 64 px pixel sample, in under a millisecond), never on the event loop.
- Outputs are observed when the model's captions come back: the top caption's confidence, length and words.
- Only images the model actually captions count. Cache hits and requests that joined an identical in-flight
  one would count one image many times; images that fail to decode are errors, counted in
  ``captioner_errors_total``, not a distribution.
- ``captioner_drift_psi{feature}`` is computed when Prometheus scrapes; ``http/drift_api.py`` serves the same
  scores with their context, and the reference for ``captioner drift save-reference``.

Observing never fails a request: an exception here is logged once and the monitor carries on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.config import ConfigError, DriftSettings
from captioner.observability.drift_features import InputFeatures, input_features, output_features
from captioner.observability.metrics import Metrics
from captioner.observability.psi import DriftMonitor

if TYPE_CHECKING:  # types only: an api-role replica builds this watch, and never imports the decoder (torch)
    from PIL import Image

    from captioner.model.preprocessing import ImageInfo, PreparedImage
    from captioner.model.protocol import Caption

log = logging.getLogger("captioner.drift")


def features_of(sample: Image.Image, info: ImageInfo, n_bytes: int) -> InputFeatures:
    """One image's drift features: the server and ``captioner drift save-reference --images`` both use this."""
    return input_features(sample, fmt=info.format, n_bytes=n_bytes, width=info.width, height=info.height)


def load_reference(path: str) -> dict[str, Any]:
    """A saved reference, or ConfigError naming ``drift.reference_path`` (so a bad file stops start-up)."""
    try:
        reference = DriftMonitor.load_reference(path)
        DriftMonitor(reference=reference)  # parses every feature's bins now rather than at the first request
    except OSError as exc:
        raise ConfigError(f"config: drift.reference_path: cannot read {path}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"config: drift.reference_path: {path} is not a drift reference: {exc}") from exc
    return reference


class DriftWatch:
    """The server's drift monitor, or a stand-in that observes nothing when ``drift.enabled`` is false."""

    def __init__(self, monitor: DriftMonitor | None) -> None:
        self.monitor = monitor
        self._failed = False
        self._alert_listeners: list[Callable[[str, float], None]] = []

    @classmethod
    def from_settings(cls, drift: DriftSettings, metrics: Metrics | None = None) -> DriftWatch:
        if not drift.enabled:
            return cls(None)
        reference = load_reference(drift.reference_path) if drift.reference_path else None
        watch = cls(None)
        watch.monitor = monitor = DriftMonitor(
            window=drift.window,
            reference_size=drift.reference_size,
            psi_alert=drift.psi_alert,
            bins=drift.bins,
            reference=reference,
            min_window=drift.min_window,
            on_alert=watch._alerted,
        )
        if metrics is not None:
            metrics.watch_drift(monitor.scores, drift.psi_alert)
        return watch

    def add_alert_listener(self, listener: Callable[[str, float], None]) -> None:
        """Call ``listener(feature, psi)`` when a feature's PSI rises over ``drift.psi_alert`` (on any thread)."""
        self._alert_listeners.append(listener)

    def _alerted(self, feature: str, psi: float) -> None:
        for listener in self._alert_listeners:
            listener(feature, psi)

    def alerting(self) -> bool:
        """Whether any feature is over the alert level now."""
        return any(f.get("alert") for f in self.report().get("features", {}).values())

    @property
    def enabled(self) -> bool:
        return self.monitor is not None

    def observe_input(self, prepared: PreparedImage, n_bytes: int) -> None:
        """Call on the thread that decoded the image: the feature extraction costs ~0.5 ms."""
        if self.monitor is None or prepared.sample is None:
            return
        try:
            self.monitor.observe_input(features_of(prepared.sample, prepared.info, n_bytes))
        except Exception:
            self._log_failure()

    def observe_output(self, captions: Sequence[Caption]) -> None:
        """The top caption of one image (captions come sorted by confidence): a regex and a lock, microseconds."""
        if self.monitor is None or not captions:
            return
        try:
            self.monitor.observe_output(output_features(captions[0].text, captions[0].confidence))
        except Exception:
            self._log_failure()

    def _log_failure(self) -> None:
        if not self._failed:  # a bug here must neither fail requests nor flood the log
            self._failed = True
            log.exception("drift monitoring failed; requests are unaffected (logged once)")

    def report(self) -> dict[str, Any]:
        if self.monitor is None:
            return {"enabled": False, "features": {}}
        return {"enabled": True, **self.monitor.report()}


def write_reference(reference: dict[str, Any], out: str | Path) -> None:
    """Write a reference atomically (a server starting meanwhile never reads half a file)."""
    target = Path(out)
    clean = {k: reference[k] for k in ("version", "bins", "features") if k in reference}
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(clean, indent=1))
    tmp.replace(target)
