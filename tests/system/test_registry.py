"""The model lifecycle through real processes: the registry CLI, the deploy gate with the real evaluator, a
server that follows the registry's aliases under load without a failed request, and a bad canary rolled back by
the server on its own.

Models with known behaviour stand in for trained ones (tests/system/test_lifecycle.py trains real ones):
- A: the untrained tiny model (seed 0); B: another (seed 1), whose captions are different;
- the gate set's references are A's own captions, so A scores high on it and B near 0: B is the worse candidate;
- SHARP: A with its output distribution sharpened, captions of the same kind at ~0.8 confidence instead of ~0.4:
  a production model that a canary of A falls far below on the live confidence signal, deterministically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from captioner.registry.store import Registry
from tests.support.processes import ServerProcess
from tests.support.registry import Load, cli, confident_copy, gate_set_from, last_line


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    from captioner.tools.init_model import write_untrained_model

    root = tmp_path_factory.mktemp("registry-models")
    return {
        "A": tiny_model_dir,
        "B": write_untrained_model(root / "b", size="tiny", seed=1),
        "SHARP": confident_copy(tiny_model_dir, root / "sharp"),
    }


def register(registry: Path, model: Path, cwd: Path) -> int:
    return int(last_line(cli("models", "register", str(model), "--name", "captioner", "--registry", str(registry),
                             cwd=cwd)))  # fmt: skip


def test_register_gate_promote_and_rollback_through_the_cli(tmp_path: Path, models: dict[str, Path]) -> None:
    annotations, images = gate_set_from(models["A"], tmp_path / "gate")
    registry = tmp_path / "registry"
    gate = {"CAPTIONER_GATE__ANNOTATIONS": str(annotations), "CAPTIONER_GATE__IMAGES": str(images)}

    def models_cli(*args: str) -> tuple[int, str]:
        done = cli("models", *args, "--registry", str(registry), cwd=tmp_path, env=gate)
        return done.returncode, done.stdout + done.stderr

    assert [register(registry, models[m], tmp_path) for m in ("A", "B", "A")] == [1, 2, 3]
    code, out = models_cli("promote", "captioner", "1")  # no production yet: only gate.min_cider (0) applies
    assert code == 0 and "gate: passed" in out, out
    code, out = models_cli("promote", "captioner", "2")
    assert code == 1, out
    header, *rows = [
        line for line in out.splitlines() if line.startswith(("metric ", "BLEU", "METEOR", "ROUGE", "CIDEr"))
    ]
    assert "candidate v2" in header and "production v1" in header
    table = {row.split()[0]: [float(v) for v in row.split()[1:]] for row in rows}
    assert list(table) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]  # Java: METEOR too
    assert table["CIDEr"][0] < table["CIDEr"][1] - 1.0  # B far below A on A's own references
    assert "REFUSED" in out
    code, out = models_cli("promote", "captioner", "3")  # A again, as a retrained model as good as production
    assert code == 0 and "gate: passed" in out and "production v1: scores stored" in out, out

    code, out = models_cli("list", "--json")
    rows_json = json.loads(out[: out.rindex("]") + 1])
    assert [(r["version"], r["aliases"]) for r in rows_json] == [(1, []), (2, []), (3, ["production"])]
    assert all(set(r["scores"]) >= {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} for r in rows_json)
    assert rows_json[1]["scores"]["CIDEr"] < rows_json[0]["scores"]["CIDEr"] == rows_json[2]["scores"]["CIDEr"]
    assert all(r["created"] and r["parent"] is None and r["untrained"] for r in rows_json)

    code, out = models_cli("rollback", "captioner")
    assert code == 0 and Registry(registry).aliases("captioner").production == 1
    code, out = models_cli("promote", "captioner", "2", "--canary", "20", "--force")
    assert code == 0 and "anyway (--force, recorded)" in out
    code, out = models_cli("show", "captioner", "2")
    shown = json.loads(out[: out.rindex("}") + 1])
    assert shown["aliases"] == ["canary"] and len(shown["forced"]) == 1
    assert shown["forced"][0]["decision"]["passed"] is False and "--force" in shown["forced"][0]["by"]
    assert [run["decision"]["passed"] for run in shown["gate_runs"]] == [False, False]
    assert (registry / "captioner" / "2" / "gate-report.json").is_file()


def serving(registry: Path, fallback: Path, **extra: str) -> ServerProcess:
    env = {"CAPTIONER_REGISTRY__PATH": str(registry), "CAPTIONER_REGISTRY__POLL_S": "0.2", **extra}
    return ServerProcess(fallback, env=env)


def test_a_running_server_switches_production_and_back_under_load_without_a_failed_request(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    registry = tmp_path / "registry"
    assert [register(registry, models[m], tmp_path) for m in ("A", "B")] == [1, 2]
    # No gate set configured here: --force is the recorded way past it (the gate itself is tested above).
    assert (
        cli("models", "promote", "captioner", "1", "--force", "--registry", str(registry), cwd=tmp_path).returncode == 0
    )
    with serving(registry, models["B"]) as server, Load(server.url) as load:
        load.until(lambda: load.answered() >= 10, "traffic on version 1")
        assert load.models() == {"captioner:1"}
        done = cli("models", "promote", "captioner", "2", "--force", "--registry", str(registry), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        load.until(lambda: sum(m == "captioner:2" for a in load.answers for _, m in a) >= 10, "version 2 serving")
        assert server.metric("captioner_registry_version", 'alias="production"') == 2
        done = cli("models", "rollback", "captioner", "--registry", str(registry), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        load.until(lambda: [m for a in load.answers for _, m in a[-5:]] == ["captioner:1"] * 10, "back to 1")
    assert load.errors == [] and load.failures == []
    assert load.answered() == load.sent  # every request sent was answered 200
    for answers in load.answers:  # per client, in order: 1, then 2, then 1 again; never a step back in between
        sequence = [m for _, m in answers]
        switches = [model for i, model in enumerate(sequence) if i == 0 or sequence[i - 1] != model]
        assert switches == ["captioner:1", "captioner:2", "captioner:1"], switches


def test_a_bad_canary_under_load_is_rolled_back_automatically(tmp_path: Path, models: dict[str, Path]) -> None:
    registry = tmp_path / "registry"
    assert [register(registry, models[m], tmp_path) for m in ("SHARP", "A")] == [1, 2]
    assert (
        cli("models", "promote", "captioner", "1", "--force", "--registry", str(registry), cwd=tmp_path).returncode == 0
    )
    canary = {"CAPTIONER_CANARY__MIN_REQUESTS": "20", "CAPTIONER_CANARY__INTERVAL_S": "0.3"}
    with serving(registry, models["A"], **canary) as server, Load(server.url) as load:
        load.until(lambda: load.answered() >= 10, "traffic on version 1")
        done = cli("models", "promote", "captioner", "2", "--canary", "50", "--force", "--registry", str(registry),
                   cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        load.until(lambda: "captioner:2" in load.models(), "the canary taking traffic")
        load.until(
            lambda: server.metric("captioner_rollbacks_total", 'variant="canary",reason="confidence"') == 1,
            "the automatic rollback",
        )
        rolled_back_at = time.monotonic()
        assert server.metric("captioner_variant_weight", 'variant="canary"') == 0
        load.until(lambda: sum(s > rolled_back_at for a in load.answers for s, _ in a) >= 10, "more traffic")
        compared = cli("models", "compare", "captioner", "--server", server.url, "--registry", str(registry),
                       cwd=tmp_path)  # fmt: skip
        live = httpx.get(server.url + "/api/v1/variants", timeout=10).json()
    assert load.errors == [] and load.failures == []
    assert load.answered() == load.sent
    after = [model for answers in load.answers for started, model in answers if started > rolled_back_at]
    assert after and set(after) == {"captioner:1"}  # nothing started after the rollback reached the canary
    aliases = Registry(registry).aliases("captioner")
    assert (aliases.production, aliases.canary) == (1, None)
    assert aliases.history[-1]["action"] == "canary_rollback" and aliases.history[-1]["reason"].startswith("confidence")
    (record,) = Registry(registry).version("captioner", 2).meta["rollbacks"]
    assert record["reason"] == "confidence" and record["automatic"] is True
    last = live["canary"]["last_rollback"]
    assert last["model"] == "captioner:2" and last["canary"]["requests"] >= 20
    assert last["production"]["mean_confidence"] - last["canary"]["mean_confidence"] > 0.1
    assert compared.returncode == 0, compared.stderr
    assert "last automatic rollback: captioner:2 (confidence)" in compared.stdout
    assert "confidence" in compared.stdout and "p95 latency" in compared.stdout
