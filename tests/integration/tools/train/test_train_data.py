"""Training batches: BLIP's label masking with the real tokenizer, lazy streaming, and serving's own pixels."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from captioner.model.preprocessing import ImagePreprocessor
from captioner.tools.train.data import IGNORE_INDEX, CaptionCollator, CaptionDataset
from tests.support.images import photo

PROMPT = "a picture of "


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> object:
    from transformers import BlipProcessor

    processor: object = BlipProcessor.from_pretrained(tiny_model_dir)
    return processor.tokenizer  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def preprocessor(tiny_model_dir: Path) -> ImagePreprocessor:
    return ImagePreprocessor.from_pretrained(tiny_model_dir, max_pixels=40_000_000)


def test_prompt_and_padding_are_masked_out_of_the_labels(tokenizer: object, tiny_model_dir: Path) -> None:
    from transformers import BlipConfig

    bos = BlipConfig.from_pretrained(tiny_model_dir).text_config.bos_token_id
    collator = CaptionCollator(tokenizer, PROMPT, bos)
    pixels = torch.zeros(3, 64, 64)
    batch = collator([{"pixel_values": pixels, "caption": "A red square."}, {"pixel_values": pixels, "caption": "two"}])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    prompt_ids = tokenizer(PROMPT)["input_ids"][:-1]  # type: ignore[operator]  # [CLS] a picture of (no [SEP])
    assert collator.prompt_length == len(prompt_ids) == 4
    assert ids[:, 0].tolist() == [bos, bos]  # [DEC] starts the decoder, as in BLIP's generate()
    assert ids[:, 1:4].tolist() == [prompt_ids[1:]] * 2
    assert (labels[:, :4] == IGNORE_INDEX).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert mask[1].sum() < mask[0].sum()  # the short caption is padded
    kept = (labels != IGNORE_INDEX) & (mask == 1)
    assert torch.equal(labels[kept], ids[kept])
    assert bool(((labels == IGNORE_INDEX) == (mask == 0) | (torch.arange(ids.shape[1]) < 4)).all())
    decoded = tokenizer.decode(labels[0][labels[0] != IGNORE_INDEX])  # type: ignore[attr-defined]
    assert decoded == "a red square [SEP]"  # the caption, cleaned, and the end token
    assert batch["pixel_values"].shape == (2, 3, 64, 64)


def test_the_dataset_reads_each_image_when_asked_and_holds_only_paths(
    tmp_path: Path, preprocessor: ImagePreprocessor
) -> None:
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    dataset = CaptionDataset([(str(p), f"caption {i}") for i, p in enumerate(paths)], preprocessor)
    assert len(dataset) == 3  # built before any file exists: nothing was read
    for seed, path in enumerate(paths):
        path.write_bytes(photo(seed))
    first = dataset[0]["pixel_values"]
    paths[0].write_bytes(photo(99))  # a changed file is read again: nothing was cached
    assert not torch.equal(dataset[0]["pixel_values"], first)
    assert len(pickle.dumps(dataset)) < 4096  # what workers receive: paths and captions, no pixels
    paths[2].unlink()
    with pytest.raises(FileNotFoundError):
        dataset[2]


def test_training_pixels_are_the_servers_pixels(tmp_path: Path, preprocessor: ImagePreprocessor) -> None:
    (tmp_path / "a.jpg").write_bytes(photo(3, size=(300, 200), fmt="JPEG"))
    dataset = CaptionDataset([(str(tmp_path / "a.jpg"), "x")], preprocessor)
    served = preprocessor((tmp_path / "a.jpg").read_bytes()).pixel_values  # the server's call
    assert torch.equal(dataset[0]["pixel_values"], served)
