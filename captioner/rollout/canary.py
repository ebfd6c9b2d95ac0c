"""The canary analysis' decision: a pure function of production's and the canary's live signals.

``decide(production, canary, settings)`` -> ``Verdict``:
- ``rollback`` (reason ``model_down``) first, whatever the traffic, when the canary's model can't serve: its load
  failed (it never will, here), or it has been down or failing for ``canary.max_down_s``. Without this rule a
  down canary answers nothing, never reaches ``min_requests``, and is never judged;
- ``wait`` until each variant has ``canary.min_requests`` requests in the period compared (both: with a canary
  at 90 % production's figures would otherwise be noise);
- ``rollback`` when the canary is worse than production beyond any configured margin, checked in this order:
  error ratio (``max_error_ratio_increase``, absolute), p95 latency (``max_p95_ratio``, a ratio), mean top-caption
  confidence (``max_confidence_drop``, absolute), user approval (``max_approval_drop``, absolute; only once each
  has ``min_feedback`` ratings). ``reason`` is the first that failed (the label of
  ``captioner_rollbacks_total``); ``detail`` names every failure with its numbers;
- ``healthy`` otherwise. Flagger and Argo Rollouts analyse generic services this way; here the signals are a
  captioning model's.

The canary's health is this analysis' business, never its replica's readiness: ``CANARY_VARIANT`` is optional to
the variant pool (serving/variants.py: its failed load or down model doesn't make /readyz 503). Every replica
runs the canary, so a broken one would otherwise take every replica out of its load balancer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from captioner.config import CanarySettings
from captioner.registry.aliases import CANARY

ERROR_RATIO, P95_LATENCY, CONFIDENCE, APPROVAL = "error_ratio", "p95_latency", "confidence", "approval"
MODEL_DOWN = "model_down"
# The variant this analysis judges: optional to its replica (see the module's docstring).
CANARY_VARIANT = CANARY


class ApprovalSource(Protocol):
    """User feedback per variant (the feedback store's ``FeedbackStats``): (ratings, share of ratings >= 4)."""

    def approval(self, variant: str) -> tuple[int, float]: ...


@dataclass(frozen=True)
class Signals:
    requests: int
    error_ratio: float | None
    p95_s: float | None
    mean_confidence: float | None
    feedback: int = 0
    approval: float | None = None
    down_s: float | None = None  # how long its model has been unable to take work; None while it can
    load_failed: str | None = None  # why its model could not be loaded (then it is not served here at all)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "error_ratio": self.error_ratio,
            "p95_s": self.p95_s,
            "mean_confidence": self.mean_confidence,
            "feedback": self.feedback,
            "approval": self.approval,
            "down_s": self.down_s,
            "load_failed": self.load_failed,
        }


@dataclass(frozen=True)
class Verdict:
    action: Literal["wait", "healthy", "rollback"]
    reason: str | None = None
    detail: str = ""


def unavailable(canary: Signals, settings: CanarySettings) -> str | None:
    """Why the canary must go whatever its traffic says (its load failed, or it has been down too long); None
    while it may stay."""
    if canary.load_failed is not None:
        return f"the canary's model failed to load ({canary.load_failed})"
    if canary.down_s is not None and canary.down_s >= settings.max_down_s:
        return f"the canary's model has been unable to serve for {canary.down_s:.0f} s (>= {settings.max_down_s:g} s)"
    return None


def decide(production: Signals, canary: Signals, settings: CanarySettings) -> Verdict:
    down = unavailable(canary, settings)
    if down is not None:
        return Verdict("rollback", reason=MODEL_DOWN, detail=down)
    short = [
        f"{name} has {s.requests} of {settings.min_requests} requests"
        for name, s in (("canary", canary), ("production", production))
        if s.requests < settings.min_requests
    ]
    if short:
        return Verdict("wait", detail="; ".join(short))
    failures: list[tuple[str, str]] = []
    p_err, c_err = production.error_ratio or 0.0, canary.error_ratio or 0.0
    if c_err - p_err > settings.max_error_ratio_increase:
        margin = f"> +{settings.max_error_ratio_increase:g}"
        failures.append((ERROR_RATIO, f"error ratio {c_err:.4f} vs production {p_err:.4f} ({margin})"))
    if production.p95_s and canary.p95_s is not None and canary.p95_s / production.p95_s > settings.max_p95_ratio:
        margin = f"> x{settings.max_p95_ratio:g}"
        text = f"p95 latency {canary.p95_s:.3f} s vs production {production.p95_s:.3f} s ({margin})"
        failures.append((P95_LATENCY, text))
    p_conf, c_conf = production.mean_confidence, canary.mean_confidence
    if p_conf is not None and c_conf is not None and p_conf - c_conf > settings.max_confidence_drop:
        margin = f"> -{settings.max_confidence_drop:g}"
        failures.append((CONFIDENCE, f"mean confidence {c_conf:.3f} vs production {p_conf:.3f} ({margin})"))
    enough_feedback = min(production.feedback, canary.feedback) >= settings.min_feedback
    p_ok, c_ok = production.approval, canary.approval
    if enough_feedback and p_ok is not None and c_ok is not None and p_ok - c_ok > settings.max_approval_drop:
        margin = f"> -{settings.max_approval_drop:g}"
        failures.append((APPROVAL, f"approval {c_ok:.3f} vs production {p_ok:.3f} ({margin})"))
    if failures:
        return Verdict("rollback", reason=failures[0][0], detail="; ".join(text for _, text in failures))
    return Verdict("healthy", detail=f"canary within every margin after {canary.requests} requests")
