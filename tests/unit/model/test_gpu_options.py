"""GPU speed-up options that need no model: defaults and refusals, padded sizes, memory and thread budgets
(tests/integration/model/test_gpu_options.py runs them on the tiny model)."""

from __future__ import annotations

import pytest

from captioner.config import ConfigError, load_settings
from captioner.model import budgets, static_decoding


def test_defaults_and_refusals() -> None:
    settings = load_settings(None, {})
    model, batching = settings.model, settings.batching
    assert (model.autocast, model.kv_cache, model.jpeg_decode, model.auto_threads) == (
        "none", "dynamic", "cpu", "measured",
    )  # fmt: skip
    assert (batching.auto_batch_size, batching.max_auto_batch_size, batching.max_batch_size) == (False, 128, 16)
    env = {"CAPTIONER_MODEL__AUTOCAST": "bfloat16", "CAPTIONER_MODEL__KV_CACHE": "static",
           "CAPTIONER_MODEL__JPEG_DECODE": "device", "CAPTIONER_MODEL__WORKER": "thread",
           "CAPTIONER_BATCHING__AUTO_BATCH_SIZE": "true",
           "CAPTIONER_BATCHING__MAX_AUTO_BATCH_SIZE": "64"}  # fmt: skip
    changed = load_settings(None, env)
    model = changed.model
    assert (model.autocast, model.kv_cache, model.jpeg_decode) == ("bfloat16", "static", "device")
    assert (changed.batching.auto_batch_size, changed.batching.max_auto_batch_size) == (True, 64)
    refused = {
        "model.jpeg_decode: device needs model.worker: thread": {"JPEG_DECODE": "device"},  # process: the default
        "model.dtype must be auto or float32": {"AUTOCAST": "float16", "DTYPE": "bfloat16"},
        "cannot be combined": {"AUTOCAST": "float16", "QUANTIZE": "int8"},
        r"model\.kv_cache must be one of": {"KV_CACHE": "paged"},
    }
    for message, model_env in refused.items():
        with pytest.raises(ConfigError, match=message):
            load_settings(None, {f"CAPTIONER_MODEL__{key}": value for key, value in model_env.items()})
    with pytest.raises(ConfigError, match=r"models\[0\]\.jpeg_decode: device needs models\[0\]\.worker"):
        load_settings(None, {}).replace(
            "models", variants=[{"variant": "b", "weight": 1, "jpeg_decode": "device", "worker": "process"}]
        )


def test_padded_sizes_are_powers_of_two() -> None:
    assert [static_decoding.padded_size(n) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65, 128)] == [
        1, 2, 4, 4, 8, 8, 16, 64, 128, 128,
    ]  # fmt: skip


def test_batch_size_for_memory() -> None:
    gib = 2**30
    assert budgets.batch_size_for_memory(per_image_bytes=gib / 4, available_bytes=100 * gib, limit=128) == 128
    assert budgets.batch_size_for_memory(per_image_bytes=gib, available_bytes=50 * gib, limit=128) == 40
    assert budgets.batch_size_for_memory(per_image_bytes=gib, available_bytes=9 * gib, limit=128) == 7
    assert budgets.batch_size_for_memory(per_image_bytes=gib, available_bytes=gib / 2, limit=128) == 1
    assert budgets.batch_size_for_memory(per_image_bytes=0, available_bytes=gib, limit=64) == 64


def test_threads_from_costs() -> None:
    # The tiny model: preprocessing about half the model's cost -> one core of two left to it.
    assert budgets.threads_from_costs(cores=2, model_cpu_s=0.0045, other_cpu_s=0.0025) == 1
    # A BLIP-base-sized model: preprocessing ~1 % -> every core to the model.
    assert budgets.threads_from_costs(cores=2, model_cpu_s=0.4, other_cpu_s=0.003) == 2
    assert budgets.threads_from_costs(cores=16, model_cpu_s=0.01, other_cpu_s=0.003) == 12
    assert budgets.threads_from_costs(cores=1, model_cpu_s=1, other_cpu_s=1) == 1
    assert budgets.threads_from_costs(cores=8, model_cpu_s=0, other_cpu_s=0) == 7
