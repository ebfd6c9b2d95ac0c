"""The model's speed options (``model.attention``, ``quantize``, ``compile``, ``num_threads``, ``worker``), each on
the real untrained tiny BLIP: accepted by the config, applied to the model, and still producing valid captions."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from captioner.config import ConfigError, load_settings
from captioner.errors import ModelUnavailable
from captioner.model import acceleration
from captioner.model.blip import BlipCaptioner
from captioner.model.process_worker import ModelProcessError, ProcessCaptioner
from captioner.model.protocol import CaptionJob
from tests.conftest import LiveServer, photo, tiny_blip, tiny_settings


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> BlipCaptioner:
    """The tiny model with the default options (SDPA attention, float32, no compile)."""
    return tiny_blip(tiny_model_dir)


@pytest.fixture(scope="module")
def jobs(reference: BlipCaptioner) -> list[CaptionJob]:
    return [CaptionJob(reference.preprocess(photo(seed)).pixel_values, 1 + seed % 3) for seed in range(6)]


def _texts(results: list[list[object]]) -> list[list[str]]:
    return [[caption.text for caption in captions] for captions in results]  # type: ignore[attr-defined]


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


@pytest.fixture(scope="module")
def child(tiny_model_dir: Path) -> Iterator[ProcessCaptioner]:
    settings = tiny_settings(tiny_model_dir)
    captioner = ProcessCaptioner(tiny_model_dir, settings.model, settings.generation, settings.limits.max_pixels)
    yield captioner
    captioner.close()


def test_process_worker_captions_like_the_thread(
    child: ProcessCaptioner, reference: BlipCaptioner, jobs: list[CaptionJob]
) -> None:
    assert (child.name, child.device, child.dtype, child.untrained) == ("test/tiny-blip", "cpu", "float32", True)
    assert child.pid is not None and child.pid != os.getpid()
    child.warm_up()
    got, want = child.caption_batch(jobs), reference.caption_batch(jobs)
    assert _texts(got) == _texts(want)
    for mine, theirs in zip(got, want, strict=True):
        assert [c.confidence for c in mine] == pytest.approx([c.confidence for c in theirs], rel=1e-5)
    assert child.caption_batch([]) == []
    assert child.measure_batch_limit(128) is None  # batching.auto_batch_size reaches the child's model: no GPU here


def test_process_worker_batches_travel_in_one_shared_slab(
    child: ProcessCaptioner, reference: BlipCaptioner, jobs: list[CaptionJob]
) -> None:
    """A batch is written into a buffer the child holds; a new one is handed over only when a batch outgrows it."""
    child._child.slab = None  # as a new child: the next batch hands it a slab
    slabs = []
    for n in (2, 3, 1, 3, 2):
        assert _texts(child.caption_batch(jobs[:n])) == _texts(reference.caption_batch(jobs[:n]))
        slabs.append(child._child.slab)
    assert [s.shape[0] for s in slabs if s is not None] == [2, 4, 4, 4, 4]  # rows: powers of two
    assert slabs[1] is not None and slabs[1].is_shared()
    assert all(s is slabs[1] for s in slabs[2:])  # kept, not sent again


def test_process_worker_failure_fails_one_batch_only(child: ProcessCaptioner, jobs: list[CaptionJob]) -> None:
    with pytest.raises(ModelProcessError, match=r"RuntimeError|ValueError"):
        child.caption_batch([CaptionJob(torch.zeros(5, 7, 7))])  # not an image the model can take
    assert len(child.caption_batch(jobs[:2])) == 2


def test_process_worker_death_is_reported_and_close_stops_the_respawn(
    tiny_model_dir: Path, jobs: list[CaptionJob]
) -> None:
    settings = tiny_settings(tiny_model_dir, health={"respawn_backoff_s": 30, "respawn_max_backoff_s": 30})
    captioner = ProcessCaptioner(
        tiny_model_dir, settings.model, settings.generation, settings.limits.max_pixels, health=settings.health
    )
    assert captioner.pid is not None
    os.kill(captioner.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while captioner.up:  # the supervisor notices
        assert time.monotonic() < deadline, "the death was never noticed"
        time.sleep(0.01)
    with pytest.raises(ModelUnavailable) as down:
        captioner.caption_batch(jobs[:1])
    assert down.value.status_code == 503 and int(down.value.headers["Retry-After"]) > 1  # the respawn is 30 s off
    captioner.close()  # during the backoff: no respawn follows
    assert not captioner._supervisor.is_alive() and captioner.respawns == 0
    captioner.close()  # idempotent
    with pytest.raises(ModelProcessError, match="stopped"):
        captioner.caption_batch(jobs[:1])


def test_server_with_process_worker(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, model={"worker": "process"})
    with LiveServer(settings) as server:
        answers = [
            httpx.post(server.url + "/api/v1/caption", content=photo(seed, fmt="JPEG"),
                       headers={"Content-Type": "image/jpeg"}, timeout=60)
            for seed in (1, 2)
        ]  # fmt: skip
        for answer in answers:
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["captions"][0]["text"] and 0 < body["captions"][0]["confidence"] <= 1
        service = server.app.state.captioner.service
        assert isinstance(service.captioner, ProcessCaptioner)
        child = service.captioner._child.process
    assert not child.is_alive()  # the service closed its model process on shutdown


def test_close_during_a_respawn_stops_the_new_child_too(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, health={"respawn_backoff_s": 0.01})
    captioner = ProcessCaptioner(
        tiny_model_dir, settings.model, settings.generation, settings.limits.max_pixels, health=settings.health
    )
    assert captioner.pid is not None
    os.kill(captioner.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (respawning := captioner._spawning) is None:  # the replacement is loading
        assert time.monotonic() < deadline and captioner.respawns == 0, "no respawn was started"
        time.sleep(0.005)
    captioner.close()
    assert not captioner._supervisor.is_alive() and captioner.respawns == 0
    respawning.process.join(10)
    assert not respawning.process.is_alive()  # no orphaned model process
