"""The model's speed options (``model.attention``, ``quantize``, ``compile``, ``num_threads``, ``worker``), each on
the real untrained tiny BLIP: accepted by the config, applied to the model, and still producing valid captions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.model import acceleration
from captioner.model.blip import BlipCaptioner
from captioner.model.protocol import CaptionJob
from tests.support.images import photo
from tests.support.model import tiny_blip


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> BlipCaptioner:
    """The tiny model with the default options (SDPA attention, float32, no compile)."""
    return tiny_blip(tiny_model_dir)


@pytest.fixture(scope="module")
def jobs(reference: BlipCaptioner) -> list[CaptionJob]:
    return [CaptionJob(reference.preprocess(photo(seed)).pixel_values, 1 + seed % 3) for seed in range(6)]


def _texts(results: list[list[object]]) -> list[list[str]]:
    return [[caption.text for caption in captions] for captions in results]  # type: ignore[attr-defined]


def test_num_threads_is_applied(tiny_model_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        tiny_blip(tiny_model_dir, num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sdpa_attention_matches_eager(tiny_model_dir: Path, reference: BlipCaptioner, jobs: list[CaptionJob]) -> None:
    eager = tiny_blip(tiny_model_dir, attention="eager")
    pixels = torch.stack([job.pixel_values for job in jobs])
    with torch.inference_mode():
        fused = reference._model.vision_model(pixel_values=pixels).last_hidden_state
        plain = eager._model.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    assert _texts(reference.caption_batch(jobs)) == _texts(eager.caption_batch(jobs))
    # Every vision layer was switched, and each text layer's self- and cross-attention (test_gpu_options.py).
    config = reference._model.config
    layers = config.vision_config.num_hidden_layers + 2 * config.text_config.num_hidden_layers
    assert acceleration.use_sdpa_attention(eager._model) == layers


def test_int8_quantisation_captions(tiny_model_dir: Path, jobs: list[CaptionJob]) -> None:
    quantized = tiny_blip(tiny_model_dir, quantize="int8")
    assert quantized.dtype == "int8"
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    modules = list(quantized._model.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert sum(isinstance(m, DynamicInt8Linear) for m in modules) > 10
    results = quantized.caption_batch(jobs)
    for job, captions in zip(jobs, results, strict=True):
        assert len(captions) == job.num_captions
        assert all(c.text and 0 < c.confidence <= 1 for c in captions)
        assert len({c.text for c in captions}) == len(captions)


def test_int8_is_refused_off_float32_cpu(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"model.quantize: int8 runs on the CPU in float32 only"):
        tiny_blip(tiny_model_dir, quantize="int8", dtype="bfloat16")


def test_compile_flag_wraps_the_model(tiny_model_dir: Path) -> None:
    compiled = tiny_blip(tiny_model_dir, compile=True)
    # Compilation itself is lazy (the server's warm-up pays for it). The vision tower is wrapped; the text decoder's
    # forward is compiled in place, because generate() reaches it through text_decoder.generate, which a wrapped
    # module would hand to the uncompiled original.
    assert isinstance(compiled._model.vision_model, torch._dynamo.eval_frame.OptimizedModule)
    assert hasattr(compiled._model.text_decoder.forward, "_torchdynamo_orig_callable")


def test_traced_model_captions_like_the_plain_one(
    tiny_model_dir: Path, reference: BlipCaptioner, jobs: list[CaptionJob]
) -> None:
    # The eager backend runs the dynamo-traced graph without inductor's minute of code generation.
    traced = tiny_blip(tiny_model_dir)
    acceleration.compile_model(traced._model, backend="eager")
    assert _texts(traced.caption_batch(jobs)) == _texts(reference.caption_batch(jobs))
