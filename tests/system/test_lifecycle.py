"""Issue 11's "done when", all real processes: synth -> train tiny -> eval score up -> register -> promote through
the gate -> a running server switches to the new version with zero failed requests under load; a bad candidate
(the model before training: 0 steps) is refused by the gate, forced in as a canary under load, and rolled back by
the server on its own.

Every step is the command line in a subprocess (``captioner data synth``, ``train``, ``eval``, ``models ...``,
``serve``). The load is synthetic scenes like those trained on, so the trained model is on familiar ground and
the untrained one is not: the live signal that tells them apart is the mean confidence of the top caption.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from captioner.registry.store import Registry
from tests.support.images import varied
from tests.support.processes import ServerProcess
from tests.support.registry import Load, cli, last_line

# The training schedule of the train tests (tests for `captioner train`: 400 steps of 32 on 1000 synthetic
# images lift CIDEr on a held-out set from ~0 to well above 1.0 on a 2-core CPU); the gate only needs "up".
TRAIN_IMAGES, VAL_IMAGES, GATE_IMAGES, LOAD_IMAGES = 1000, 60, 40, 300
SCHEDULE = ["--max-steps", "400", "--lr", "2e-3", "--batch-size", "32", "--warmup-ratio", "0.05", "--seed", "0"]
MIN_CIDER_GAIN = 0.5


def test_train_gate_promote_switch_and_roll_back_a_bad_canary(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {"CAPTIONER_MODEL__DEVICE": "cpu"}

    def run(*args: str, expect: int = 0, **extra: str) -> str:
        done = cli(*args, cwd=tmp_path, env={**env, **extra}, timeout_s=1200)
        assert done.returncode == expect, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    for name, count, seed in (("train", TRAIN_IMAGES, 1), ("val", VAL_IMAGES, 2), ("gate", GATE_IMAGES, 3),
                              ("load", LOAD_IMAGES, 4)):  # fmt: skip
        run("data", "synth", "--out", str(tmp_path / name), "--images", str(count), "--seed", str(seed))

    def cider(model: Path, label: str) -> float:
        report = tmp_path / f"eval-{label}.json"
        val = tmp_path / "val"
        run("eval", "--annotations", str(val / "captions.json"), "--images", str(val), "--out", str(report),
            CAPTIONER_MODEL__PATH=str(model))  # fmt: skip
        return float(json.loads(report.read_text())["metrics"]["CIDEr"])

    trained = tmp_path / "trained"
    run("train", "--base", str(tiny_model_dir), "--annotations", str(tmp_path / "train" / "captions.json"),
        "--images", str(tmp_path / "train"), "--val-annotations", str(tmp_path / "val" / "captions.json"),
        "--val-images", str(tmp_path / "val"), "--out", str(trained), *SCHEDULE)  # fmt: skip
    before, after = cider(tiny_model_dir, "untrained"), cider(trained, "trained")
    assert after > before + MIN_CIDER_GAIN, (before, after)

    registry = tmp_path / "registry"
    env.update({
        "CAPTIONER_REGISTRY__PATH": str(registry),
        "CAPTIONER_GATE__ANNOTATIONS": str(tmp_path / "gate" / "captions.json"),
        "CAPTIONER_GATE__IMAGES": str(tmp_path / "gate"),
    })  # fmt: skip
    assert (
        last_line(cli("models", "register", str(tiny_model_dir), "--name", "captioner", cwd=tmp_path, env=env)) == "1"
    )
    assert "gate: passed" in run("models", "promote", "captioner", "1")  # the first production: min_cider only

    load_dir = tmp_path / "load"
    scenes = sorted(load_dir.glob("*.png"))
    server_env = {**env, "CAPTIONER_REGISTRY__POLL_S": "0.2", "CAPTIONER_CANARY__MIN_REQUESTS": "30",
                  "CAPTIONER_CANARY__INTERVAL_S": "0.5"}  # fmt: skip
    with (
        ServerProcess(tiny_model_dir, env=server_env) as server,
        # Each round over the scenes is new bytes: cache hits don't count toward the canary's min_requests.
        Load(server.url, image_of=lambda n: varied(scenes[n % len(scenes)].read_bytes(), n // len(scenes))) as load,
    ):

        def served_by(model: str) -> int:
            return sum(m == model for answers in load.answers for _, m in answers)

        load.until(lambda: served_by("captioner:1") >= 10, "traffic on the untrained version 1")
        assert last_line(cli("models", "register", str(trained), "--name", "captioner", cwd=tmp_path, env=env)) == "2"
        promoted = run("models", "promote", "captioner", "2")
        assert "gate: passed" in promoted and "production v1" in promoted
        load.until(lambda: served_by("captioner:2") >= 20, "the trained version 2 serving")

        # The bad candidate: the model before training (0 steps), registered again as version 3.
        assert last_line(cli("models", "register", str(tiny_model_dir), "--name", "captioner", cwd=tmp_path,
                             env=env)) == "3"  # fmt: skip
        refused = run("models", "promote", "captioner", "3", expect=1)
        assert "REFUSED" in refused and "candidate v3" in refused and "production v2" in refused
        run("models", "promote", "captioner", "3", "--canary", "50", "--force")
        load.until(lambda: served_by("captioner:3") >= 1, "the canary taking traffic")
        try:
            load.until(lambda: server.metric("captioner_rollbacks_total", 'variant="canary"') == 1, "the rollback")
        except AssertionError as exc:  # say what the analysis saw: the figures it compared
            status = httpx.get(server.url + "/api/v1/variants", timeout=10).json()["canary"]
            raise AssertionError(f"{exc}; canary analysis: {status}") from None
        variants = httpx.get(server.url + "/api/v1/variants", timeout=10).json()
    assert load.errors == [] and load.failures == []
    assert load.answered() == load.sent  # every request during both switches was answered 200
    for answers in load.answers:  # per client: 1 until the switch, then 2 (the canary's 3 only in between)
        sequence = [m for _, m in answers if m != "captioner:3"]
        assert sequence == sorted(sequence) and sequence[-1] == "captioner:2"
    reg = Registry(registry)
    aliases = reg.aliases("captioner")
    assert (aliases.production, aliases.canary) == (2, None)
    assert aliases.history[-1]["action"] == "canary_rollback"
    two, three = reg.version("captioner", 2).meta, reg.version("captioner", 3).meta
    assert two["parent"] == "models:/captioner/1"  # the training card's parent, found in the registry
    assert two["data"]["train"]["annotations_sha256"]
    one = reg.version("captioner", 1).meta
    assert two["scores"]["CIDEr"] > one["scores"]["CIDEr"] + MIN_CIDER_GAIN / 2  # the gate saw the gain too
    assert three["scores"]["CIDEr"] == pytest.approx(one["scores"]["CIDEr"])  # the same weights as version 1
    assert len(three["forced"]) == 1 and len(three["rollbacks"]) == 1
    assert variants["canary"]["last_rollback"]["model"] == "captioner:3", variants["canary"]
