"""How a config value is checked: one rule per key (type, bounds, choices), one-line errors naming the key, and
secrets (API keys, passwords, tokens) never shown in an error."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key."""


def rule_of(*, ge: float | None = None, gt: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    return {"ge": ge, "gt": gt, "choices": choices}


def setting(default: Any, **rule: Any) -> Any:
    """A section's key with its default and its rule (``ge``, ``gt``, ``choices``)."""
    return field(default=default, metadata=rule_of(**rule))


def build_section(section: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"config: unknown key {section}.{key} (known: {', '.join(known)})")
    kwargs = {key: coerce(f"{section}.{key}", hints[key], value, known[key].metadata) for key, value in values.items()}
    return cls(**kwargs)


# Keys whose values are secrets (API keys, passwords in Redis URLs, webhook tokens, signing secrets): an error names
# the key and the kind of value it got, never the value.
_SECRET_KEYS = re.compile(r"^auth\.|redis_url$|webhook|secret|password|token", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEYS.search(name))


def _shown(name: str, value: Any) -> str:
    """How an error message shows ``value`` of the key ``name``: itself, or only its type for a secret."""
    return f"a {type(value).__name__} (value hidden)" if is_secret_key(name) else repr(value)


def yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(exc, "problem", None) or type(exc).__name__)


def coerce(name: str, hint: Any, value: Any, rule: Mapping[str, Any]) -> Any:
    if typing.get_origin(hint) in (list, types.GenericAlias) or hint is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config: {name} must be a list of strings, got {_shown(name, value)}")
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {name} must be true or false, got {_shown(name, value)}")
        return value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        result: Any = value
        kind = "an integer"
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        result = float(value) if ok else value
        kind = "a number"
    else:
        ok = isinstance(value, str)
        result = value
        kind = "a string"
        if ok and rule.get("choices") and value not in rule["choices"]:
            raise ConfigError(f"config: {name} must be one of {', '.join(rule['choices'])}, got {_shown(name, value)}")
    bound = ""
    if rule.get("ge") is not None:
        bound = f" >= {rule['ge']:g}"
        ok = ok and result >= rule["ge"]
    if rule.get("gt") is not None:
        bound = f" > {rule['gt']:g}"
        ok = ok and result > rule["gt"]
    if not ok:
        raise ConfigError(f"config: {name} must be {kind}{bound}, got {_shown(name, value)}")
    return result
