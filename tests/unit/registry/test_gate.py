"""The deploy gate's decision and its side-by-side report."""

from __future__ import annotations

from captioner.config import GateSettings
from captioner.registry.gate import decide, side_by_side

GATE = GateSettings(annotations="a.json", images="img", min_cider=0.5, max_regression=0.02)


def test_a_candidate_passes_at_or_above_production_minus_the_margin() -> None:
    production = {"CIDEr": 1.0}
    assert decide({"CIDEr": 1.2}, production, GATE).passed
    assert decide({"CIDEr": 0.98}, production, GATE).passed  # exactly the allowed regression
    worse = decide({"CIDEr": 0.97}, production, GATE)
    assert not worse.passed
    assert len(worse.reasons) == 1 and "production CIDEr 1.0000" in worse.reasons[0]
    assert len(worse.checks) == 2 and worse.checks[1].startswith("FAIL")


def test_min_cider_applies_always_and_alone_without_production() -> None:
    assert decide({"CIDEr": 0.5}, None, GATE).passed
    low = decide({"CIDEr": 0.4}, None, GATE)
    assert not low.passed and "gate.min_cider" in low.reasons[0] and len(low.checks) == 1
    both = decide({"CIDEr": 0.1}, {"CIDEr": 2.0}, GATE)
    assert len(both.reasons) == 2
    assert not decide({"Bleu_4": 0.3}, None, GATE).passed  # no CIDEr, no pass
    assert decide({"CIDEr": 0.5}, {"Bleu_1": 1.0}, GATE).passed  # production never scored on CIDEr: floor only


def test_the_report_puts_every_metric_side_by_side() -> None:
    candidate = {"Bleu_1": 0.5, "Bleu_2": 0.4, "Bleu_3": 0.3, "Bleu_4": 0.2, "ROUGE_L": 0.45, "CIDEr": 0.9}
    production = {**candidate, "METEOR": 0.25, "CIDEr": 1.1}
    table = side_by_side([("candidate v2", candidate), ("production v1", production)]).splitlines()
    assert "candidate v2" in table[0] and "production v1" in table[0]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert list(rows) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert rows["CIDEr"] == ["0.9000", "1.1000"]
    assert rows["METEOR"] == ["-", "0.2500"]  # not computed for one side: shown as missing, not as 0
