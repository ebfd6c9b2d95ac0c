"""The deploy gate's decision, a pure function of two score sets and ``gate`` settings, and its report.

A candidate passes when its CIDEr is at least ``gate.min_cider`` and, when there is a production version, at
least production's CIDEr minus ``gate.max_regression`` (both scored on the same gate set). CIDEr is the number
``captioner eval`` reports (pycocoevalcap's CIDEr-D, 0..10; papers print it x100, so 0.02 here is "2 points").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from captioner.config import GateSettings

GATE_METRIC = "CIDEr"
# The report's rows: the key `captioner eval` uses, and the name people know it by.
REPORT_METRICS = (
    ("Bleu_1", "BLEU-1"), ("Bleu_2", "BLEU-2"), ("Bleu_3", "BLEU-3"), ("Bleu_4", "BLEU-4"),
    ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr"),
)  # fmt: skip


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: tuple[str, ...]  # every rule applied, with its numbers
    reasons: tuple[str, ...]  # the rules that failed (empty when passed)

    def to_json(self) -> dict[str, object]:
        return {"passed": self.passed, "checks": list(self.checks), "reasons": list(self.reasons)}


def decide(candidate: Mapping[str, float], production: Mapping[str, float] | None, gate: GateSettings) -> GateDecision:
    checks: list[str] = []
    reasons: list[str] = []
    score = candidate.get(GATE_METRIC)
    if score is None:
        return GateDecision(False, (), (f"the candidate has no {GATE_METRIC} score",))

    def rule(ok: bool, text: str) -> None:
        checks.append(f"{'ok  ' if ok else 'FAIL'} {text}")
        if not ok:
            reasons.append(text)

    rule(score >= gate.min_cider, f"candidate CIDEr {score:.4f} >= gate.min_cider {gate.min_cider:.4f}")
    if production is not None and production.get(GATE_METRIC) is not None:
        floor = production[GATE_METRIC] - gate.max_regression
        rule(
            score >= floor,
            f"candidate CIDEr {score:.4f} >= production CIDEr {production[GATE_METRIC]:.4f} "
            f"- gate.max_regression {gate.max_regression:.4f} (= {floor:.4f})",
        )
    return GateDecision(not reasons, tuple(checks), tuple(reasons))


def side_by_side(columns: list[tuple[str, Mapping[str, float] | None]]) -> str:
    """A table: one row per metric, one column per (label, scores); a missing score prints as '-'."""
    width = max(12, *(len(label) + 2 for label, _ in columns))
    lines = ["metric    " + "".join(f"{label:>{width}}" for label, _ in columns)]
    for key, shown in REPORT_METRICS:
        cells = []
        for _, scores in columns:
            value = None if scores is None else scores.get(key)
            cells.append(f"{'-' if value is None else f'{value:.4f}':>{width}}")
        lines.append(f"{shown:<10}" + "".join(cells))
    return "\n".join(lines)
