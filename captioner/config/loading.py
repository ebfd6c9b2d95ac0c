"""``load_settings``: defaults, then the YAML file, then ``CAPTIONER_<SECTION>__<KEY>`` environment overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from captioner.config.rules import ConfigError, yaml_problem
from captioner.config.settings import SECTIONS, TOP_LEVEL_LISTS, Settings, build

ENV_PREFIX = "CAPTIONER_"


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the YAML file at ``path`` (if any), then environment overrides; validated."""
    raw: dict[str, Any] = {name: {} for name in SECTIONS}
    raw["models"] = []
    source = "defaults"
    if path is not None:
        file_path = Path(path)
        try:
            loaded = yaml.safe_load(file_path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config: cannot read {file_path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            # Not str(exc): PyYAML quotes the offending line, which may hold a key or a password.
            raise ConfigError(f"config: {file_path} is not valid YAML ({yaml_problem(exc)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {file_path} must hold a mapping of sections")
        for section, values in loaded.items():
            if section in TOP_LEVEL_LISTS:
                raw[section] = values if values is not None else []
                continue
            if section not in SECTIONS:
                raise ConfigError(f"config: unknown section {section!r} (known: {', '.join(SECTIONS)})")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config: {section} must be a mapping")
            raw[section].update(values)
        source = str(file_path)
    overrides = _env_overrides(environ if environ is not None else os.environ)
    for (section, key), value in overrides.items():
        raw[section][key] = value
    if overrides:
        source += " + environment"
    settings = build(raw, source)
    if settings.registry.path and settings.models:
        # (Checked here, not in _build: serving from the registry fills `models` from its aliases itself.)
        raise ConfigError("config: registry.path and models are exclusive: the registry's aliases choose the variants")
    return settings


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in SECTIONS:
            raise ConfigError(f"config: {name} names unknown section {section!r}")
        # YAML parsing gives "32" -> 32, "true" -> True, "[a, b]" -> list, like the file would.
        try:
            found[(section, key)] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            found[(section, key)] = text
    return found
