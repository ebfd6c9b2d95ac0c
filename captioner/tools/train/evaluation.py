"""Validation during ``captioner train``: caption the validation images and score them, every eval interval.

transformers' ``Trainer`` evaluates with teacher forcing (loss on the reference tokens); what matters for a
captioner is the caption it *generates*. ``CaptioningTrainer`` therefore adds the scores of real captions
(``eval_cider``, ``eval_bleu_4``, ``eval_rouge_l``) to every evaluation, so that ``metric_for_best_model="cider"``
keeps the checkpoint that captions best.

- Generation mirrors serving (``BlipCaptioner``): the config's prompt, beams, length limits and penalties.
- The scorer is ``coco_scores.score_captions``, the one ``captioner eval`` uses, with the pure-Python PTB
  tokenizer: no JVM start per evaluation. METEOR (Java) is left to ``captioner eval`` on the final model.
- Under ``torchrun``/``accelerate launch`` each process captions its own share of the images; the captions are
  gathered so every process scores the whole set and all agree on the best checkpoint.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from captioner.config import GenerationSettings
from captioner.model.preprocessing import ImagePreprocessor
from captioner.tools.eval.coco_scores import score_captions
from captioner.tools.train.data import CaptionSet, ImageDataset, clean_caption, collate_images

# The scorer's metric names -> the keys logged (after Trainer's "eval_" prefix) and kept in the model card.
_METRICS = {"CIDEr": "cider", "Bleu_4": "bleu_4", "Bleu_1": "bleu_1", "ROUGE_L": "rouge_l"}


class CaptionScorer:
    """Captions a validation set with a model in memory and scores the captions against the references."""

    def __init__(
        self,
        val: CaptionSet,
        preprocessor: ImagePreprocessor,
        tokenizer: Any,
        prompt: str,
        generation: GenerationSettings,
        *,
        batch_size: int,
        num_workers: int,
    ) -> None:
        self.references: dict[Hashable, list[str]] = {
            image.image_id: [clean_caption(r) for r in image.references] for image in val.images
        }
        self.items = [(image.image_id, str(val.image_dir / image.file_name)) for image in val.images]
        self.preprocessor = preprocessor
        self.tokenizer = tokenizer
        self.generation = generation
        self.batch_size = batch_size
        self.num_workers = num_workers
        prompt_ids = tokenizer(prompt, return_tensors="pt")
        # As in BlipCaptioner: generate() drops the prompt's final [SEP], so text starts after len - 1 tokens.
        self.prompt_ids: torch.Tensor = prompt_ids["input_ids"]
        self.prompt_mask: torch.Tensor = prompt_ids["attention_mask"]
        self.prompt_length = int(self.prompt_ids.shape[1]) - 1

    def caption(self, model: Any, items: Sequence[tuple[Hashable, str]], device: torch.device) -> dict[Hashable, str]:
        """The top caption of each image in ``items``, greedy or beam search as the config says."""
        loader = DataLoader(
            ImageDataset(items, self.preprocessor),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_images,
        )
        gen = self.generation
        captions: dict[Hashable, str] = {}
        for batch in loader:
            pixel_values = batch["pixel_values"].to(device)
            size = pixel_values.shape[0]
            out = model.generate(
                pixel_values=pixel_values,
                input_ids=self.prompt_ids.expand(size, -1).clone().to(device),
                attention_mask=self.prompt_mask.expand(size, -1).to(device),
                num_beams=gen.num_beams,
                max_length=gen.max_length,
                min_length=gen.min_length,
                length_penalty=gen.length_penalty,
                repetition_penalty=gen.repetition_penalty,
                do_sample=False,
            )
            texts = self.tokenizer.batch_decode(out[:, self.prompt_length :], skip_special_tokens=True)
            captions.update(zip(batch["image_ids"], (" ".join(t.split()) for t in texts), strict=True))
        return captions

    def score(self, captions: dict[Hashable, str]) -> dict[str, float]:
        scores = score_captions(self.references, captions, java=None)
        return {key: scores.metrics[name] for name, key in _METRICS.items()}


class CaptioningTrainer(Trainer):
    """``Trainer`` whose evaluations also report the scores of generated captions (see the module doc)."""

    def __init__(self, *args: Any, scorer: CaptionScorer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scorer = scorer

    def evaluation_loop(
        self,
        dataloader: DataLoader[Any],
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.scorer is not None and output.metrics is not None:
            # Added here, before evaluate() logs the metrics and the best checkpoint is chosen from them.
            scores = self.scorer.score(self._gathered_captions(self.scorer))
            output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in scores.items()})
        return output

    def _gathered_captions(self, scorer: CaptionScorer) -> dict[Hashable, str]:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        model: Any = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            # Mixed precision is applied by accelerate around forward(); generate() bypasses it, so enter it here.
            with torch.inference_mode(), self.accelerator.autocast():
                mine = scorer.caption(model, scorer.items[rank::world], self.accelerator.device)
        finally:
            model.train(was_training)
        gathered: list[tuple[Hashable, str]] = gather_object(list(mine.items()))
        return dict(gathered)
