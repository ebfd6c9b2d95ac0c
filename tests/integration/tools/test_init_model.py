"""``captioner init-model``: the untrained BLIP it writes loads with plain transformers and captions sensibly."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from captioner.model.weights import UNTRAINED_MARKER, is_untrained
from captioner.tools.init_model import build_vocab, write_untrained_model
from tests.support.images import photo

PROMPT = "a picture of "


def load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor: Any = BlipProcessor.from_pretrained(model_dir)
    model: Any = BlipForConditionalGeneration.from_pretrained(model_dir)
    return processor, model.eval()


def caption(processor: Any, model: Any, images: list[Image.Image], beams: int = 3, returned: int = 1) -> list[str]:
    """Exactly as the server calls BLIP, then the prompt stripped from the decoded text."""
    inputs = processor(images=images, text=[PROMPT] * len(images), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            pixel_values=inputs.pixel_values,
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            num_beams=beams,
            max_length=20,
            min_length=5,
            num_return_sequences=returned,
            output_scores=True,
            return_dict_in_generate=True,
        )
    texts = processor.batch_decode(out.sequences, skip_special_tokens=True)
    return [" ".join(text.removeprefix(PROMPT.strip()).split()) for text in texts]


def synthetic_images() -> list[Image.Image]:
    """Ten different pictures: drawn 'photos', solid colours, a gradient, a checkerboard and noise."""
    images = [Image.open(io.BytesIO(photo(seed))).convert("RGB") for seed in range(4)]
    images += [Image.new("RGB", (96, 72), colour) for colour in ((200, 30, 30), (20, 160, 40), (250, 250, 250))]
    gradient = Image.linear_gradient("L").resize((120, 90)).convert("RGB")
    checkers = Image.new("RGB", (96, 96), "white")
    draw = ImageDraw.Draw(checkers)
    for i in range(0, 96, 24):
        for j in range(0, 96, 24):
            if (i + j) // 24 % 2:
                draw.rectangle([i, j, i + 23, j + 23], fill="navy")
    noise = torch.randint(0, 256, (80, 100, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return [*images, gradient, checkers, Image.fromarray(noise.numpy())]


def test_writes_every_file(tiny_model_dir: Path) -> None:
    names = {path.name for path in tiny_model_dir.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    assert expected | {"processor_config.json", "preprocessor_config.json", UNTRAINED_MARKER} <= names


def test_loads_with_plain_transformers_and_ids_agree(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor, model = load(tiny_model_dir)
    text, vision = model.config.text_config, model.config.vision_config
    tokenizer = processor.tokenizer
    assert len(tokenizer) == text.vocab_size == model.text_decoder.cls.predictions.decoder.out_features
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("[DEC]", text.bos_token_id)
    assert (tokenizer.sep_token_id, tokenizer.pad_token_id) == (text.sep_token_id, text.pad_token_id) == (102, 0)
    assert "[ENC]" in tokenizer.all_special_tokens
    ids = tokenizer(PROMPT).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "picture", "of", "[SEP]"]
    size = processor.image_processor.size
    assert (size["height"], size["width"]) == (vision.image_size, vision.image_size)
    assert vision.image_size % vision.patch_size == 0
    pixels = processor(images=[Image.new("RGB", (300, 200))], return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, vision.image_size, vision.image_size)
    # vocab.txt is the tokenizer's WordPiece vocabulary, in id order.
    vocab = (tiny_model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == build_vocab("tiny") and tokenizer.convert_tokens_to_ids(vocab) == list(range(len(vocab)))


def test_marker(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert is_untrained(tiny_model_dir) and is_untrained(str(tiny_model_dir))
    text = (tiny_model_dir / UNTRAINED_MARKER).read_text(encoding="utf-8")
    assert "init-model" in text and json.loads(text.splitlines()[-1]) == {"size": "tiny", "seed": 0}
    (tmp_path / "config.json").write_text("{}")
    assert not is_untrained(tmp_path)
    assert not is_untrained(tmp_path / "missing")


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = write_untrained_model(tmp_path / "again", size="tiny", seed=0)
    assert torch.equal(torch.rand(3), before), "writing a model must not disturb the caller's random state"
    assert (again / "model.safetensors").read_bytes() == weights
    assert (again / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    other = write_untrained_model(tmp_path / "other", size="tiny", seed=1)
    assert (other / "model.safetensors").read_bytes() != weights


def test_tiny_is_small_and_its_captions_are_non_empty_and_follow_the_image(tiny_model_dir: Path) -> None:
    processor, model = load(tiny_model_dir)
    # Small, which is what makes it quick in tests (a stopwatch would only measure how loaded the machine is):
    # a few hundred thousand parameters against BLIP-base's 247 million.
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    first = caption(processor, model, [synthetic_images()[0]])
    assert first[0]
    images = synthetic_images()
    captions = caption(processor, model, images)  # one batch, as the server runs them
    assert all(captions), captions
    assert len(set(captions)) >= len(images) - 2, captions
    # Each image alone gets the caption it got in the batch: no cross-talk between batch rows.
    assert [caption(processor, model, [image])[0] for image in images[:3]] == captions[:3]
    # Three returned beams are three different captions.
    beams = caption(processor, model, images, returned=3)
    distinct = [len(set(beams[i : i + 3])) for i in range(0, len(beams), 3)]
    assert all(beams) and sum(n == 3 for n in distinct) >= len(images) - 1, beams


def test_base_writes_and_loads_with_blip_base_shapes(tmp_path: Path) -> None:
    """The full-size model (about 900 MB): written, loaded and shaped like Salesforce/blip-image-captioning-base."""
    out = write_untrained_model(tmp_path / "base", size="base", seed=0)
    try:
        processor, model = load(out)
        shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        assert shapes["text_decoder.bert.embeddings.word_embeddings.weight"] == (30524, 768)
        assert shapes["text_decoder.cls.predictions.decoder.weight"] == (30524, 768)
        assert shapes["vision_model.embeddings.position_embedding"] == (1, 577, 768)
        assert shapes["vision_model.embeddings.patch_embedding.weight"] == (768, 3, 16, 16)
        assert shapes["text_decoder.bert.encoder.layer.11.crossattention.self.key.weight"] == (768, 768)
        assert processor.image_processor.size == {"height": 384, "width": 384}
        assert len(processor.tokenizer) == 30524
    finally:
        shutil.rmtree(out, ignore_errors=True)  # don't leave 900 MB in pytest's kept temp folders


def test_mini_writes_loads_and_captions_with_its_own_shape(tmp_path: Path) -> None:
    """``--size mini``: between tiny and small, the 8 x 8 patch grid of a 128 px image, and sensible captions."""
    out = write_untrained_model(tmp_path / "mini", size="mini", seed=0)
    processor, model = load(out)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (192, 3, 16, 16)
    assert shapes["vision_model.embeddings.position_embedding"] == (1, 65, 192)  # 8 x 8 patches and the class
    assert shapes["vision_model.encoder.layers.3.mlp.fc1.weight"] == (768, 192)
    assert shapes["text_decoder.bert.encoder.layer.3.crossattention.self.key.weight"] == (192, 192)
    assert "text_decoder.bert.encoder.layer.4.crossattention.self.key.weight" not in shapes
    assert model.config.text_config.num_attention_heads == model.config.vision_config.num_attention_heads == 4
    assert processor.image_processor.size == {"height": 128, "width": 128}
    assert len(processor.tokenizer) == len(build_vocab("mini")) + 2
    # Several times tiny (under a million) and a fraction of small (about 18 million) in parameters.
    assert 3_000_000 < sum(p.numel() for p in model.parameters()) < 8_000_000
    assert json.loads((out / UNTRAINED_MARKER).read_text().splitlines()[-1]) == {"size": "mini", "seed": 0}
    images = synthetic_images()
    captions = caption(processor, model, images)
    assert all(captions) and len(set(captions)) >= len(images) - 3, captions
