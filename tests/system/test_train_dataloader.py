"""Training data through a torch DataLoader with worker processes: every batch arrives, in order."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from captioner.model.preprocessing import ImagePreprocessor
from captioner.tools.synth import write_dataset
from captioner.tools.train.data import CaptionCollator, CaptionDataset, CaptionSet


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> object:
    from transformers import BlipProcessor

    processor: object = BlipProcessor.from_pretrained(tiny_model_dir)
    return processor.tokenizer  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def preprocessor(tiny_model_dir: Path) -> ImagePreprocessor:
    return ImagePreprocessor.from_pretrained(tiny_model_dir, max_pixels=40_000_000)


PROMPT = "a picture of "


def test_a_dataloader_with_workers_streams_batches(
    tmp_path: Path, preprocessor: ImagePreprocessor, tokenizer: object
) -> None:
    write_dataset(tmp_path, 6, seed=1)
    captions = CaptionSet.load(tmp_path / "captions.json", tmp_path)
    assert captions.num_captions == 30
    loader = DataLoader(
        CaptionDataset(captions.pairs(), preprocessor),
        batch_size=8,
        num_workers=2,
        collate_fn=CaptionCollator(tokenizer, PROMPT, bos_token_id=0),
    )
    sizes = [batch["pixel_values"].shape[0] for batch in loader]
    assert sizes == [8, 8, 8, 6]
