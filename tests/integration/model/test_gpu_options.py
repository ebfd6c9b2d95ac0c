"""The GPU options, each checked on the CPU against the reference path (the defaults) on the real tiny BLIP:
SDPA in both towers, the static KV cache with compiled decoding, float16/bfloat16 autocast, JPEG decoding on the
model's device, and the batch size chosen from GPU memory.

Tolerances (each stated where it is asserted):
- SDPA, static cache, compiled decoding, device JPEG decoding on the CPU: the same captions, confidences equal to
  float32 rounding (1e-5).
- float16 autocast: the same captions; the reference caption's mean token log-likelihood within 0.01 nats.
- bfloat16 autocast (8 significant bits): captions may differ where two beams are near-tied, so at least 8 of the
  10 images keep their caption, and the reference caption's mean token log-likelihood stays within 0.05 nats.
- device JPEG decoding against Pillow's default path, which decodes JPEGs over twice the model's input size at
  reduced DCT scale (a different downscaling filter): on 640x480 photos the model input is within 1 grey level
  of 255 on average and 12 at most (measured 0.6-0.8 and 8). Fine 4 px stripes in a 1600x1200 JPEG differ by
  up to ~4 levels on average: the draft decode aliases them; the device path, like Pillow at full scale, does not.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from captioner.config import load_settings
from captioner.errors import InvalidImage, TooLarge
from captioner.model import acceleration, budgets, device_jpeg, static_decoding
from captioner.model.blip import BlipCaptioner
from captioner.model.preprocessing import ImagePreprocessor
from captioner.model.protocol import Caption, CaptionJob
from tests.support.images import photo
from tests.support.model import tiny_blip, tiny_settings
from tests.support.servers import LiveServer

GREY_LEVEL = 1 / (255 * 0.2758)  # one level of 255 after normalising, with the largest of BLIP's channel stds


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> BlipCaptioner:
    return tiny_blip(tiny_model_dir)


@pytest.fixture(scope="module")
def jobs(reference: BlipCaptioner) -> list[CaptionJob]:
    """Ten images asking for 1, 2 or 3 captions: three beam groups of 3-4 images, so padding happens."""
    return [CaptionJob(reference.preprocess(photo(seed)).pixel_values, 1 + seed % 3) for seed in range(10)]


@pytest.fixture(scope="module")
def expected(reference: BlipCaptioner, jobs: list[CaptionJob]) -> list[list[Caption]]:
    return reference.caption_batch(jobs)


def _texts(results: list[list[Caption]]) -> list[list[str]]:
    return [[caption.text for caption in captions] for captions in results]


def _assert_same(got: list[list[Caption]], want: list[list[Caption]], rel: float = 1e-5) -> None:
    assert _texts(got) == _texts(want)
    for mine, theirs in zip(got, want, strict=True):
        assert [c.confidence for c in mine] == pytest.approx([c.confidence for c in theirs], rel=rel)


# ---- configuration ----


# ---- SDPA in both towers ----


def test_sdpa_covers_both_towers_and_matches_eager(
    tiny_model_dir: Path, reference: BlipCaptioner, jobs: list[CaptionJob], expected: list[list[Caption]]
) -> None:
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    def text_modules(captioner: BlipCaptioner) -> list[Any]:
        return [m for m in captioner._model.modules() if type(m) is BlipTextSelfAttention]

    # On the CPU the default switches the vision tower only (the text tower's SDPA measured no gain there).
    assert all("forward" not in vars(m) for m in text_modules(reference))
    eager = tiny_blip(tiny_model_dir, attention="eager")
    _assert_same(eager.caption_batch(jobs), expected)
    config = reference._model.config
    # Both towers, as on a GPU: each text layer has a self- and a cross-attention module.
    layers = config.vision_config.num_hidden_layers + 2 * config.text_config.num_hidden_layers
    assert acceleration.use_sdpa_attention(eager._model, text=True) == layers
    assert all(m.forward.__func__ is acceleration._text_sdpa_forward for m in text_modules(eager))
    _assert_same(eager.caption_batch(jobs), expected)
    static = tiny_blip(tiny_model_dir, kv_cache="static")  # the fused text attention reads static caches too
    acceleration.use_sdpa_attention(static._model, text=True)
    _assert_same(static.caption_batch(jobs), expected)


# ---- static KV cache, compiled decoding ----


def test_transformers_static_cache_fails_for_blip(reference: BlipCaptioner, jobs: list[CaptionJob]) -> None:
    """Why static_decoding hands generate its own cache: BLIP's text encoder wraps only a DynamicCache for its
    cross-attention, so generate's own static cache receives the image's keys and overflows."""
    pixels = torch.stack([job.pixel_values for job in jobs[:2]])
    prompt = reference._prompt_ids.expand(2, -1).clone()
    with pytest.raises(IndexError, match="out of bounds"), torch.inference_mode():
        reference._model.generate(pixel_values=pixels, input_ids=prompt, num_beams=3, max_length=20,
                                  cache_implementation="static")  # fmt: skip


def test_static_caches_reorder_in_place_and_leave_image_keys(reference: BlipCaptioner) -> None:
    cache = static_decoding.new_cache(reference._model, max_length=20)
    text, image = cache.self_attention_cache, cache.cross_attention_cache
    keys = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 2, 1, 8).contiguous()
    text.update(keys.clone(), keys.clone(), 0)
    image.update(keys.clone(), keys.clone(), 0)
    text_address, image_before = text.layers[0].keys.data_ptr(), image.layers[0].keys.clone()
    cache.reorder_cache(torch.tensor([3, 3, 0, 1]))
    assert text.layers[0].keys.data_ptr() == text_address  # same tensor: fixed addresses for CUDA graphs
    assert text.layers[0].keys[:, 0, 0, 0].tolist() == [3.0, 3.0, 0.0, 1.0]
    assert torch.equal(image.layers[0].keys, image_before)  # beams of one image share its keys: not copied


def test_static_cache_captions_equal_the_dynamic_ones(
    tiny_model_dir: Path, jobs: list[CaptionJob], expected: list[list[Caption]]
) -> None:
    static = tiny_blip(tiny_model_dir, kv_cache="static")
    _assert_same(static.caption_batch(jobs), expected)


def test_compiled_static_decoding_captions_equal_and_compile_once_per_padded_size(
    tiny_model_dir: Path, jobs: list[CaptionJob], expected: list[list[Caption]]
) -> None:
    graphs: list[int] = []

    def counting_backend(graph: Any, example_inputs: list[Any]) -> Any:
        graphs.append(len(graph.graph.nodes))
        return graph.forward  # runs the traced graph as is (no code generation)

    torch._dynamo.reset()
    compiled = tiny_blip(tiny_model_dir, kv_cache="static")
    acceleration.compile_model(compiled._model, backend=counting_backend, static_shapes=True)
    _assert_same(compiled.caption_batch(jobs), expected)
    assert graphs, "the decoder's forward was never compiled"
    traced = len(graphs)
    # Same padded sizes again: nothing new to compile.
    _assert_same(compiled.caption_batch(jobs), expected)
    assert len(graphs) == traced


# ---- float16 / bfloat16 autocast ----


def _mean_log_likelihood(captioner: BlipCaptioner, pixels: torch.Tensor, text: str) -> float:
    """The caption's mean token log-probability (prompt excluded, end token included), teacher-forced."""
    prompt = load_settings(None, {}).model.prompt  # tiny_settings keeps the default prompt
    ids = captioner._processor.tokenizer(prompt + text, return_tensors="pt")["input_ids"]
    ids[:, 0] = captioner._model.config.text_config.bos_token_id  # as BLIP's generate does
    autocast: Any = contextlib.nullcontext()
    if captioner._autocast is not None:
        autocast = torch.autocast("cpu", dtype=captioner._autocast)
    with torch.inference_mode(), autocast:
        logits = captioner._model(pixel_values=pixels[None], input_ids=ids).logits.float()
    steps = logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    return float(steps[captioner._prompt_len - 1 :].mean())


@pytest.mark.parametrize(("dtype", "min_equal", "max_nats"), [("float16", 10, 0.01), ("bfloat16", 8, 0.05)])
def test_autocast_captions_within_tolerance(
    tiny_model_dir: Path, reference: BlipCaptioner, jobs: list[CaptionJob], expected: list[list[Caption]],
    dtype: str, min_equal: int, max_nats: float,
) -> None:  # fmt: skip
    half = tiny_blip(tiny_model_dir, autocast=dtype)
    assert half.dtype == f"{dtype}-autocast"  # in the cache key: half-precision captions never answer float32's
    assert next(half._model.parameters()).dtype == torch.float32  # weights stay float32
    got = half.caption_batch(jobs)
    same = sum(mine[0].text == theirs[0].text for mine, theirs in zip(got, expected, strict=True))
    assert same >= min_equal, (_texts(got), _texts(expected))
    for job, captions in zip(jobs, expected, strict=True):
        text = captions[0].text
        full = _mean_log_likelihood(reference, job.pixel_values, text)
        assert full == pytest.approx(torch.tensor(captions[0].confidence).log().item(), abs=1e-4)
        assert abs(_mean_log_likelihood(half, job.pixel_values, text) - full) <= max_nats


# ---- JPEG decoding on the model's device ----


def _jpeg(image: Image.Image, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


def _oriented(orientation: int) -> bytes:
    image = Image.open(io.BytesIO(photo(orientation, size=(96, 40), fmt="PNG"))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(image, quality=92, exif=exif.tobytes())


@pytest.fixture(scope="module")
def pre(tiny_model_dir: Path) -> ImagePreprocessor:
    return ImagePreprocessor.from_pretrained(tiny_model_dir, max_pixels=40_000_000)


def test_device_decoding_is_pillows_exactly_on_the_cpu(tiny_model_dir: Path, pre: ImagePreprocessor) -> None:
    exact = ImagePreprocessor.from_pretrained(tiny_model_dir, max_pixels=40_000_000)
    exact.jpeg_draft = False  # Pillow at full scale: libjpeg-turbo's pixels, as torchvision's CPU decoder gives
    decoder = device_jpeg.DeviceJpegDecoder(pre, torch.device("cpu"))
    grey = Image.open(io.BytesIO(photo(7, size=(300, 200), fmt="PNG"))).convert("L")
    images = [photo(1, fmt="JPEG"), photo(2, size=(640, 480), fmt="JPEG"), _jpeg(grey), *map(_oriented, range(1, 9))]
    prepared = [device_jpeg.defer(pre, data) for data in images]
    assert all(p.jpeg is not None and p.pixel_values.numel() == 0 for p in prepared)
    decoded = decoder([p.jpeg for p in prepared if p.jpeg is not None])
    for data, mine, p in zip(images, decoded, prepared, strict=True):
        theirs = exact(data)
        assert torch.equal(mine, theirs.pixel_values)
        assert p.info == theirs.info and p.sample is not None  # same facts for the log, a sample for drift


def test_device_decoding_within_tolerance_of_the_draft_path(pre: ImagePreprocessor) -> None:
    decoder = device_jpeg.DeviceJpegDecoder(pre, torch.device("cpu"))
    for seed in (1, 2, 3):  # 640x480: decoded by Pillow at 1/4 scale
        data = photo(seed, size=(640, 480), fmt="JPEG")
        mine = decoder([device_jpeg.defer(pre, data).jpeg])[0]  # type: ignore[list-item]
        difference = (mine - pre(data).pixel_values).abs()
        assert float(difference.mean()) <= GREY_LEVEL and float(difference.max()) <= 12 * GREY_LEVEL


def test_device_decoding_checks_images_before_deferring(tiny_model_dir: Path, pre: ImagePreprocessor) -> None:
    data = photo(4, size=(640, 480), fmt="JPEG")
    with pytest.raises(InvalidImage, match="truncated"):
        device_jpeg.defer(pre, data[: len(data) // 2])
    small = ImagePreprocessor.from_pretrained(tiny_model_dir, max_pixels=1000)
    with pytest.raises(TooLarge, match="pixels"):
        device_jpeg.defer(small, data)
    # Not deferred: PNG (decoded as before), CMYK JPEG (its inks convert differently): tensors as Pillow's.
    cmyk = _jpeg(Image.new("CMYK", (50, 40), (10, 200, 30, 5)))
    for other in (photo(5, fmt="PNG"), cmyk):
        prepared = device_jpeg.defer(pre, other)
        assert prepared.jpeg is None and torch.equal(prepared.pixel_values, pre(other).pixel_values)


def test_a_batch_the_device_decoder_refuses_is_decoded_one_by_one(
    pre: ImagePreprocessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = device_jpeg.decode_jpeg
    calls: list[tuple[str, str]] = []

    def refusing(data: Any, *, mode: Any, device: Any) -> Any:
        calls.append(("batch" if isinstance(data, list) else "one", str(device)))
        if isinstance(data, list) or str(device) != "cpu":
            raise RuntimeError("nvjpeg refused it")
        return real(data, mode=mode, device=device)

    monkeypatch.setattr(device_jpeg, "decode_jpeg", refusing)
    decoder = device_jpeg.DeviceJpegDecoder(pre, torch.device("meta"))  # stands for a GPU whose decoder refuses
    data = [photo(seed, size=(80 + seed, 60), fmt="JPEG") for seed in (1, 2)]
    images = decoder._decode([device_jpeg.defer(pre, d).jpeg for d in data])  # type: ignore[misc]
    # The batch, then each image alone on the device, then on the CPU (libjpeg), moved to the device.
    assert calls == [("batch", "meta"), ("one", "meta"), ("one", "cpu"), ("one", "meta"), ("one", "cpu")]
    assert [(i.device.type, tuple(i.shape)) for i in images] == [("meta", (3, 60, 81)), ("meta", (3, 60, 82))]


def test_server_decodes_jpegs_on_the_device(tiny_model_dir: Path, reference: BlipCaptioner) -> None:
    settings = tiny_settings(tiny_model_dir, model={"jpeg_decode": "device"})
    bodies = [photo(11, fmt="JPEG"), photo(12, fmt="JPEG"), photo(13, fmt="PNG")]
    with LiveServer(settings) as server:
        answers = [
            httpx.post(server.url + "/api/v1/caption", content=body, headers={"Content-Type": "image/jpeg"}, timeout=60)
            for body in bodies
        ]
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        want = reference.caption_batch([CaptionJob(reference.preprocess(body).pixel_values)])[0][0]
        assert answer.json()["captions"][0]["text"] == want.text


# ---- budgets: batch size from GPU memory, threads from measured costs ----


def test_measured_threads_are_applied_after_warm_up(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, float] = {}

    def record(*, cores: int, model_cpu_s: float, other_cpu_s: float) -> int:
        seen.update(cores=cores, model=model_cpu_s, other=other_cpu_s)
        return 1

    before = torch.get_num_threads()
    monkeypatch.setattr(budgets, "threads_from_costs", record)
    try:
        captioner = tiny_blip(tiny_model_dir, auto_threads="measured")
        torch.set_num_threads(2)
        captioner.warm_up()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen["cores"] == acceleration.cpu_count() and seen["model"] > 0 and seen["other"] > 0


def test_auto_batch_size_needs_a_gpu_and_is_taken_by_the_service(
    tiny_model_dir: Path, reference: BlipCaptioner
) -> None:
    assert reference.measure_batch_limit(128) is None  # on the CPU the configured size stays

    class Measured:
        def __getattr__(self, name: str) -> Any:
            return getattr(reference, name)

        def measure_batch_limit(self, limit: int) -> int:
            return min(limit, 48)

    from captioner.observability.metrics import Metrics
    from captioner.serving.service import CaptionService

    async def warmed(auto: bool) -> int:
        settings = tiny_settings(tiny_model_dir, batching={"auto_batch_size": auto, "max_auto_batch_size": 64})
        service = CaptionService(settings, Measured(), Metrics())  # type: ignore[arg-type]
        await service.warm_up()
        size = service.batcher.max_batch_size
        await service.close(1)
        return size

    import asyncio

    assert asyncio.run(warmed(True)) == 48
    assert asyncio.run(warmed(False)) == 16
