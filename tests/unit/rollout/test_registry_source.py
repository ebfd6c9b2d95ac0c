"""Serving from the registry: aliases -> variants, change detection, and the canary rollback's record."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml

from captioner.config import ConfigError, Settings, load_settings
from captioner.registry.store import Registry
from captioner.rollout.canary import Verdict
from captioner.rollout.registry_source import RegistrySource
from captioner.serving.variants import Variant
from tests.support.model import fake_model


def settings_for(root: Path) -> Settings:
    return load_settings(None, {}).replace("registry", path=str(root), name="cap")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "reg")
    for seed in (1, 2, 3):
        registry.register(fake_model(tmp_path / f"m{seed}", seed), "cap", command="t")
    return registry


def test_without_production_the_configured_model_is_served_as_production(registry: Registry) -> None:
    settings = settings_for(registry.root)
    source = RegistrySource(settings)
    assert source.refresh() is False  # no aliases file: nothing to serve from the registry yet
    variants = source.resolve(settings).variants()
    assert [(name, weight, s.model.path) for name, weight, s in variants] == [
        ("production", 100.0, settings.model.path)
    ]


def test_production_and_canary_become_variants_with_the_canarys_weight(registry: Registry) -> None:
    settings = settings_for(registry.root)
    source = RegistrySource(settings)
    registry.update_aliases("cap", lambda a: a.promoted(1, by="t").with_canary(2, 10, by="t"))
    assert source.refresh() is True
    variants = {name: (weight, s.model) for name, weight, s in source.resolve(settings).variants()}
    assert variants["production"][0] == 90.0 and variants["canary"][0] == 10.0
    production = variants["production"][1]
    assert (production.name, production.revision) == ("cap:1", "1")
    assert Path(production.path) == registry.version("cap", 1).model_dir
    assert production.dtype == settings.model.dtype  # everything else is the config's model section
    assert source.refresh() is False  # nothing changed since
    registry.update_aliases("cap", lambda a: a.canary_cleared(by="t", reason="x").with_canary(2, 10, by="t"))
    assert source.refresh() is False  # a new file, but the same versions and weights: no reload needed
    registry.update_aliases("cap", lambda a: a.promoted(3, by="t"))
    assert source.refresh() is True
    assert [n for n, _, _ in source.resolve(settings).variants()] == ["production", "canary"]


def test_an_automatic_rollback_clears_the_alias_records_why_and_never_routes_there_again(registry: Registry) -> None:
    settings = settings_for(registry.root)
    source = RegistrySource(settings)
    registry.update_aliases("cap", lambda a: a.promoted(1, by="t").with_canary(2, 50, by="t"))
    source.refresh()
    canary = next(
        Variant(name, weight, s, service=cast(Any, SimpleNamespace()))
        for name, weight, s in source.resolve(settings).variants()
        if name == "canary"
    )
    assert source.version_of(canary) == 2
    verdict = Verdict("rollback", "confidence", "mean confidence 0.40 vs production 0.80 (> -0.1)")
    source._record_rollback(2, verdict)
    source._vetoed.add(2)
    aliases = registry.aliases("cap")
    assert aliases.canary is None and aliases.production == 1
    assert aliases.history[-1]["action"] == "canary_rollback" and "confidence" in aliases.history[-1]["reason"]
    (record,) = registry.version("cap", 2).meta["rollbacks"]
    assert record["reason"] == "confidence" and record["automatic"] is True
    # Even before this process re-reads the file, the vetoed canary is out of what it serves.
    assert [n for n, _, _ in source.resolve(settings).variants()] == ["production"]
    # A second replica reaching the same verdict finds the canary gone and changes nothing.
    history = len(aliases.history)
    source._record_rollback(2, verdict)
    assert len(registry.aliases("cap").history) == history
    assert len(registry.version("cap", 2).meta["rollbacks"]) == 1


def test_registry_and_a_models_list_are_exclusive_and_the_webhook_must_be_http(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"registry": {"path": "reg"}, "models": [{"variant": "a"}]}))
    with pytest.raises(ConfigError, match=r"registry\.path and models are exclusive"):
        load_settings(config, {})
    with pytest.raises(ConfigError, match=r"drift.webhook_url must be an http\(s\) URL") as refused:
        load_settings(None, {"CAPTIONER_DRIFT__WEBHOOK_URL": "ftp://host/secret-token"})
    assert "secret-token" not in str(refused.value)
    settings = load_settings(None, {"CAPTIONER_REGISTRY__POLL_S": "0.5", "CAPTIONER_CANARY__INTERVAL_S": "1"})
    assert (settings.registry.poll_s, settings.canary.interval_s) == (0.5, 1.0)


def test_the_cascade_first_model_comes_from_a_folder_or_a_registry_alias(registry: Registry, tmp_path: Path) -> None:
    from captioner.model.weights import WeightsUnavailable
    from captioner.registry.store import RegistryError
    from captioner.rollout.registry_source import cascade_first

    registry.update_aliases("cap", lambda a: a.promoted(2, by="t").with_canary(3, 10, by="t"))
    settings = settings_for(registry.root)
    assert cascade_first(settings) is None  # no cascade
    on = settings.replace("cascade", enabled=True, first="registry:cap")
    first = cascade_first(on)
    assert first is not None
    assert (first.model.name, first.model.revision) == ("cap:2", "2")
    assert first.model.path == str(registry.version("cap", 2).model_dir)
    assert (first.cache.max_entries, first.cache.redis_url, first.models) == (0, "", ())  # no cache of its own
    assert first.model.device == on.model.device  # the rest of `model` is the main model's
    for alias, version in (("@canary", 3), ("@1", 1), ("@production", 2)):
        resolved = cascade_first(on.replace("cascade", first="registry:cap" + alias))
        assert resolved is not None and resolved.model.name == f"cap:{version}"
    folder = fake_model(tmp_path / "student")
    resolved = cascade_first(on.replace("cascade", first=str(folder)))
    assert resolved is not None and (resolved.model.path, resolved.model.name) == (str(folder), "student")
    with pytest.raises(RegistryError):
        cascade_first(on.replace("cascade", first="registry:cap@9"))
    with pytest.raises(RegistryError, match="no canary version"):
        registry.update_aliases("cap", lambda a: a.canary_cleared(by="t", reason="test"))
        cascade_first(on.replace("cascade", first="registry:cap@canary"))
    with pytest.raises(WeightsUnavailable, match="holds no model weights"):
        cascade_first(on.replace("cascade", first=str(tmp_path / "nothing")))
