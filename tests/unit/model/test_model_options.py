"""Model options that need no model: defaults, validation, the automatic thread count."""

from __future__ import annotations

import pytest
import torch

from captioner.config import ConfigError, load_settings
from captioner.model import acceleration


def test_defaults_and_validation() -> None:
    model = load_settings(None, {}).model
    assert (model.attention, model.compile, model.quantize, model.num_threads, model.worker) == (
        "sdpa", False, "none", 0, "process",
    )  # fmt: skip
    env = {"QUANTIZE": "int8", "COMPILE": "true", "WORKER": "thread"}
    model = load_settings(None, {f"CAPTIONER_MODEL__{k}": v for k, v in env.items()}).model
    assert (model.quantize, model.compile, model.worker) == ("int8", True, "thread")
    for key, bad in (("quantize", "int4"), ("attention", "flash"), ("worker", "gpu"), ("num_threads", -1)):
        with pytest.raises(ConfigError, match=rf"model\.{key}"):
            load_settings(None, {f"CAPTIONER_MODEL__{key.upper()}": str(bad)})
    with pytest.raises(ConfigError, match=r"model\.compile"):
        load_settings(None, {"CAPTIONER_MODEL__COMPILE": "yes please"})


def test_thread_count_auto_leaves_a_core_on_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acceleration, "cpu_count", lambda: 2)
    assert acceleration.threads_for(0, torch.device("cpu")) == 1
    assert acceleration.threads_for(3, torch.device("cpu")) == 3
    assert acceleration.threads_for(0, torch.device("cuda")) is None
    monkeypatch.setattr(acceleration, "cpu_count", lambda: 1)
    assert acceleration.threads_for(0, torch.device("cpu")) == 1
    monkeypatch.setattr(acceleration, "cpu_count", lambda: 16)
    assert acceleration.threads_for(0, torch.device("cpu")) == 15
