"""``captioner models`` in-process: register's last line, list --json's shape, the gate's exits and records.

The gate's scoring is replaced by fixed numbers here (``score`` is patched); tests/system/test_registry.py runs
it for real, with the evaluator and real models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from captioner.cli import main
from captioner.registry.store import Registry
from captioner.tools.eval.gate import GateSet, Scored
from captioner.tools.models import promote as models_promote
from tests.support.model import fake_model

CIDER = {1: 1.0, 2: 0.5, 3: 1.01}  # per version: v2 is worse than v1, v3 as good


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no config.yaml here: defaults only
    root = tmp_path / "reg"
    for seed in (1, 2, 3):
        assert main(["models", "register", str(fake_model(tmp_path / f"m{seed}", seed)), "--name", "cap",
                     "--registry", str(root)]) == 0  # fmt: skip
    scored: list[int] = []

    def fake_score(registry: Registry, version: Any, settings: Any, gate: Any, *, rescore: bool) -> Scored:
        scored.append(version.number)
        metrics = {"Bleu_1": 0.5, "Bleu_4": 0.1, "ROUGE_L": 0.4, "CIDEr": CIDER[version.number]}
        registry.update_meta(version.name, version.number, lambda m: m.__setitem__("scores", metrics))
        return Scored(metrics, stored_at=None)

    monkeypatch.setattr(models_promote, "score", fake_score)
    monkeypatch.setattr(models_promote, "gate_set", lambda settings: GateSet(Path("g.json"), Path("g"), 5, "fp"))
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_register_prints_the_new_version_as_its_last_line(
    tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code, out, _ = run(capsys, "models", "register", str(fake_model(tmp_path / "m9", 9)), "--name", "cap",
                       "--registry", str(registry), "--parent", "1")  # fmt: skip
    assert code == 0
    assert out.splitlines()[-1] == "4"
    assert Registry(registry).version("cap", 4).meta["parent"] == "models:/cap/1"
    code, out, _ = run(capsys, "models", "register", str(fake_model(tmp_path / "n", 1)), "--name", "new",
                       "--registry", str(registry))  # fmt: skip
    assert out.splitlines()[-1] == "1"  # versions count per name


def test_list_json_is_one_object_per_version_with_the_contract_fields(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "models", "promote", "cap", "1", "--registry", str(registry))[0] == 0
    assert run(capsys, "models", "promote", "cap", "3", "--canary", "10", "--registry", str(registry))[0] == 0
    code, out, _ = run(capsys, "models", "list", "--json", "--registry", str(registry))
    assert code == 0
    rows = json.loads(out)
    assert [(r["name"], r["version"]) for r in rows] == [("cap", 1), ("cap", 2), ("cap", 3)]
    for row in rows:
        assert {"name", "version", "aliases", "parent", "scores", "created"} <= set(row)
        assert isinstance(row["version"], int) and isinstance(row["aliases"], list)
        assert isinstance(row["scores"], dict) and isinstance(row["created"], str)
    assert [r["aliases"] for r in rows] == [["production"], [], ["canary"]]
    assert rows[0]["scores"]["CIDEr"] == 1.0 and rows[1]["scores"] == {}
    assert rows[2]["canary_weight"] == 10.0
    code, out, _ = run(capsys, "models", "list", "--registry", str(registry))
    assert "production" in out and "canary (10%)" in out


def test_the_gate_refuses_a_worse_candidate_with_exit_1_and_a_side_by_side_report(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "models", "promote", "cap", "1", "--registry", str(registry))[0] == 0
    code, out, _ = run(capsys, "models", "promote", "cap", "2", "--registry", str(registry))
    assert code == 1
    assert "candidate v2" in out and "production v1" in out and "REFUSED" in out
    cider_row = next(line for line in out.splitlines() if line.startswith("CIDEr"))
    assert cider_row.split()[1:] == ["0.5000", "1.0000"]
    reg = Registry(registry)
    assert reg.aliases("cap").production == 1
    runs = reg.version("cap", 2).meta["gate_runs"]
    assert runs[-1]["decision"]["passed"] is False and runs[-1]["against"] == 1
    assert reg.version("cap", 2).meta["promotions"] == [] and reg.version("cap", 2).meta["forced"] == []


def test_force_overrides_the_gate_and_is_recorded(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "models", "promote", "cap", "1", "--registry", str(registry))[0] == 0
    reg_args = ("--registry", str(registry))
    code, out, _ = run(capsys, "models", "promote", "cap", "2", "--canary", "30", "--force", *reg_args)
    assert code == 0 and "--force" in out
    reg = Registry(registry)
    aliases = reg.aliases("cap")
    assert (aliases.production, aliases.canary.version if aliases.canary else None) == (1, 2)
    forced = reg.version("cap", 2).meta["forced"]
    assert len(forced) == 1 and forced[0]["alias"] == "canary" and forced[0]["weight"] == 30.0
    assert forced[0]["decision"]["passed"] is False and "promote cap 2" in forced[0]["by"]
    assert aliases.history[-1]["forced"] is True
    # A version that passes is promoted without being "forced", even with --force.
    assert run(capsys, "models", "promote", "cap", "3", "--force", "--registry", str(registry))[0] == 0
    assert Registry(registry).version("cap", 3).meta["forced"] == []


def test_rollback_returns_to_the_previous_production_and_clears_the_canary(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["1"], ["3"], ["2", "--canary", "5", "--force"]):
        assert run(capsys, "models", "promote", "cap", *argv, "--registry", str(registry))[0] == 0
    code, out, _ = run(capsys, "models", "rollback", "cap", "--reason", "user reports", "--registry", str(registry))
    assert code == 0 and "production is version 1 again (was 3); canary 2 cleared" in out
    aliases = Registry(registry).aliases("cap")
    assert (aliases.production, aliases.canary) == (1, None)
    assert aliases.history[-1]["reason"] == "user reports"
    code, _, err = run(capsys, "models", "rollback", "cap", "--registry", str(registry))
    assert code == 1 and "no earlier production version" in err


def test_show_and_usage_errors(registry: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "models", "promote", "cap", "1", "--registry", str(registry))[0] == 0
    code, out, _ = run(capsys, "models", "show", "cap", "--registry", str(registry))
    assert code == 0 and json.loads(out)["production"] == 1 and json.loads(out)["versions"] == [1, 2, 3]
    code, out, _ = run(capsys, "models", "show", "cap", "1", "--registry", str(registry))
    shown = json.loads(out)
    assert shown["aliases"] == ["production"] and shown["promotions"][0]["alias"] == "production"
    assert run(capsys, "models", "show", "cap", "8", "--registry", str(registry))[0] == 2
    assert run(capsys, "models", "list")[0] == 2  # no registry.path, no --registry
    code, _, err = run(capsys, "models", "promote", "cap", "2", "--canary", "150", "--registry", str(registry))
    assert code == 2 and "--canary" in err
    assert run(capsys, "models", "promote", "cap", "1", "--registry", str(registry))[:2] == (
        0, "models:/cap/1 is production already\n",
    )  # fmt: skip
    runs = len(Registry(registry).version("cap", 1).meta["gate_runs"])
    code, _, err = run(capsys, "models", "promote", "cap", "1", "--canary", "10", "--registry", str(registry))
    assert code == 1 and "a canary must be another version" in err
    assert len(Registry(registry).version("cap", 1).meta["gate_runs"]) == runs  # refused before the gate ran


def test_without_a_gate_set_promote_needs_force(
    registry: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from captioner.tools.eval.gate import gate_set

    monkeypatch.setattr(models_promote, "gate_set", gate_set)  # the real one: gate.annotations is unset
    code, _, err = run(capsys, "models", "promote", "cap", "1", "--registry", str(registry))
    assert code == 2 and "gate.annotations" in err
    assert run(capsys, "models", "promote", "cap", "1", "--force", "--registry", str(registry))[0] == 0
    forced = Registry(registry).version("cap", 1).meta["forced"]
    assert forced[0]["decision"] is None and "gate.annotations" in forced[0]["error"]
