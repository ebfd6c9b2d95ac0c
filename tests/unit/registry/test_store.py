"""The registry on disk: versions from 1 per name, copies, lineage from the card, aliases, atomic and locked writes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from captioner.registry.aliases import AliasError, Aliases, Canary
from captioner.registry.files import locked, write_json
from captioner.registry.store import Registry, RegistryError, weights_sha256
from tests.support.model import fake_model


def test_versions_count_from_one_per_name_and_the_model_is_copied_without_checkpoints(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    source = fake_model(tmp_path / "m0")
    first = registry.register(source, "captioner", command="test")
    second = registry.register(fake_model(tmp_path / "m1", 1), "captioner", command="test")
    other = registry.register(source, "other", command="test")
    assert (first.number, second.number, other.number) == (1, 2, 1)
    assert registry.versions("captioner") == [1, 2]
    assert registry.names() == ["captioner", "other"]
    copied = first.model_dir
    assert (copied / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert not (copied / "checkpoints").exists()
    meta = registry.version("captioner", 1).meta
    assert meta["version"] == 1 and meta["name"] == "captioner" and meta["command"] == "test"
    assert meta["weights_sha256"] == weights_sha256(source)
    assert meta["scores"] == {} and meta["forced"] == [] and meta["created"]
    # Nothing half-made is left beside the versions.
    assert sorted(p.name for p in (tmp_path / "reg" / "captioner").iterdir()) == [".lock", "1", "2"]


def test_register_refuses_a_folder_without_a_model_and_bad_names(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="not a model folder"):
        registry.register(tmp_path / "empty", "captioner", command="test")
    for bad in ("../escape", "", "a/b", ".hidden"):
        with pytest.raises(RegistryError, match="model name"):
            registry.register(fake_model(tmp_path / f"m{len(bad)}{bad.count('/')}"), bad, command="test")
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.version("captioner", 7)


def test_lineage_and_data_hashes_come_from_the_training_card(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    base = registry.register(fake_model(tmp_path / "base"), "captioner", command="test")
    card = {
        "parent": {"path": str(tmp_path / "base"), "weights_sha256": base.meta["weights_sha256"]},
        "data": {"train": {"annotations": "a.json", "annotations_sha256": "ab" * 32}},
        "code_revision": "captioner 0.1.0 (abc123)",
    }
    child = registry.register(fake_model(tmp_path / "child", 1, card=card), "captioner", command="test")
    assert child.meta["parent"] == "models:/captioner/1"
    assert child.meta["data"]["train"]["annotations_sha256"] == "ab" * 32
    assert child.meta["card"] == "training.json" and (child.model_dir / "training.json").is_file()
    hub = {"parent": {"name": "Salesforce/blip-image-captioning-base", "weights_sha256": "0" * 64}}
    assert registry.register(fake_model(tmp_path / "hub", 2, card=hub), "captioner", command="t").meta["parent"] == (
        "Salesforce/blip-image-captioning-base"
    )
    assert base.meta["parent"] is None


def test_a_distilled_models_teacher_is_resolved_to_its_registered_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    teacher = registry.register(fake_model(tmp_path / "teacher", 5), "teacher", command="test")
    card = {"distilled_from": {"path": str(tmp_path / "teacher"), "weights_sha256": teacher.meta["weights_sha256"]}}
    student = registry.register(fake_model(tmp_path / "student", 6, card=card), "student", command="test")
    assert student.meta["distilled_from"] == "models:/teacher/1"
    unregistered = {"distilled_from": {"path": "/models/big", "weights_sha256": "0" * 64}}
    other = registry.register(fake_model(tmp_path / "other", 7, card=unregistered), "student", command="test")
    assert other.meta["distilled_from"] == "/models/big"
    assert teacher.meta["distilled_from"] is None  # no card: not distilled


def test_alias_transitions_keep_a_rollback_stack_and_a_history() -> None:
    aliases = Aliases().promoted(1, by="t").promoted(2, by="t").with_canary(3, 10, by="t", forced=True)
    assert (aliases.production, aliases.canary, aliases.previous) == (2, Canary(3, 10.0), (1,))
    assert aliases.of(2) == ["production"] and aliases.of(3) == ["canary"] and aliases.of(1) == []
    graduated = aliases.promoted(3, by="t")
    assert (graduated.production, graduated.canary, graduated.previous) == (3, None, (1, 2))
    back = graduated.rolled_back(by="t", reason="bad")
    assert (back.production, back.previous) == (2, (1,))
    assert (back.rolled_back(by="t").production, back.rolled_back(by="t").previous) == (1, ())
    with pytest.raises(AliasError, match="no earlier production"):
        back.rolled_back(by="t").rolled_back(by="t")
    assert [e["action"] for e in graduated.history] == ["promote", "promote", "canary", "promote"]
    assert aliases.history[-1]["forced"] is True and aliases.history[-1]["weight"] == 10
    cleared = aliases.canary_cleared(by="server", reason="confidence: low", automatic=True)
    assert cleared.canary is None and cleared.history[-1]["action"] == "canary_rollback"
    for refused in (
        lambda: Aliases().with_canary(1, 10, by="t"),  # no production to compare with
        lambda: aliases.with_canary(2, 10, by="t"),  # production itself
        lambda: aliases.with_canary(4, 100, by="t"),
        lambda: aliases.promoted(2, by="t"),
        lambda: Aliases().canary_cleared(by="t", reason=""),
    ):
        with pytest.raises(AliasError):
            refused()
    assert Aliases.from_json(json.loads(json.dumps(aliases.to_json()))) == aliases


def test_rolling_back_also_clears_the_canary_and_the_file_round_trips(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    for seed in range(3):
        registry.register(fake_model(tmp_path / f"m{seed}", seed), "captioner", command="t")
    registry.update_aliases("captioner", lambda a: a.promoted(1, by="t").promoted(2, by="t"))
    registry.update_aliases("captioner", lambda a: a.with_canary(3, 25, by="t"))
    stored = json.loads(registry.aliases_path("captioner").read_text())
    assert stored["production"] == 2 and stored["canary"] == {"version": 3, "weight": 25.0}
    after = registry.update_aliases("captioner", lambda a: a.rolled_back(by="t"))
    assert (after.production, after.canary) == (1, None)
    assert registry.aliases("captioner") == after
    with pytest.raises(RegistryError, match="no model called"):
        registry.update_aliases("nothing", lambda a: a)


def test_write_json_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "aliases.json"
    write_json(target, {"production": 1})
    inode = target.stat().st_ino
    write_json(target, {"production": 2})
    assert json.loads(target.read_text()) == {"production": 2}
    assert target.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["aliases.json"]
    with pytest.raises(TypeError):
        write_json(target, {"not json": object()})
    assert json.loads(target.read_text()) == {"production": 2}  # a failed write leaves the old file whole
    assert [p.name for p in tmp_path.iterdir()] == ["aliases.json"]


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.register(fake_model(tmp_path / "m"), "captioner", command="t")
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for step in range(15):
                registry.update_meta("captioner", 1, lambda m, s=step: m.setdefault("notes", []).append((index, s)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(registry.version("captioner", 1).meta["notes"]) == 6 * 15


def test_the_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    from captioner.registry.files import RegistryLockTimeout

    lock = tmp_path / ".lock"
    # flock locks belong to the open file description: a second open in this process is a second holder.
    with locked(lock), pytest.raises(RegistryLockTimeout), locked(lock, timeout_s=0.2):
        pass
    with locked(lock, timeout_s=0.2):  # free again once the first holder is done
        pass
