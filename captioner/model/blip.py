"""``BlipCaptioner``: BLIP (``BlipForConditionalGeneration``) on one device, captioning batches.

Everything here runs on the model's dedicated thread (``caption_batch``) or a preprocessing thread
(``preprocess``); nothing here touches the event loop.

Confidence: for each returned sequence, transformers' beam search reports ``sequences_scores``, the sum of the
log-probabilities of the generated tokens (the prompt excluded, the end token included) divided by
``generated_length ** length_penalty``. With the default ``length_penalty = 1`` that is the mean token
log-probability, and ``confidence = exp(sequences_score)`` is the geometric mean of the token probabilities,
a number in (0, 1]. With greedy search (``num_beams = 1``) the same mean is computed from the step scores.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

from captioner.config import GenerationSettings, ModelSettings
from captioner.model import acceleration
from captioner.model.preprocessing import ImagePreprocessor, PreparedImage
from captioner.model.protocol import Caption, CaptionJob
from captioner.model.weights import is_untrained

logger = logging.getLogger("captioner.model")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Confidence never reaches 0: the contract says (0, 1], and a log-likelihood of -inf is still "very unsure".
_MIN_CONFIDENCE = 1e-12


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[requested]


J = TypeVar("J")
Out = TypeVar("Out")


def split_on_oom(run: Callable[[Sequence[J]], list[Out]], jobs: Sequence[J]) -> list[Out]:
    """Run a batch; on CUDA out-of-memory, run each half on its own, down to single items, then give up."""
    try:
        return run(jobs)
    except torch.cuda.OutOfMemoryError:
        if len(jobs) <= 1:
            raise
    # Retry only out here: inside the except block the error's traceback keeps the failed attempt's frames, and
    # every tensor they hold, alive, and the smaller batch would run out of memory on top of them.
    if torch.cuda.is_available():
        gc.collect()  # tensors caught in reference cycles too
        torch.cuda.empty_cache()
    half = len(jobs) // 2
    logger.warning("CUDA out of memory at batch size %d; retrying as %d + %d", len(jobs), half, len(jobs) - half)
    return split_on_oom(run, jobs[:half]) + split_on_oom(run, jobs[half:])


class Preprocessing:
    """Decoding and resizing, done in the server process whichever worker runs the model."""

    _preprocessor: ImagePreprocessor

    @property
    def image_size(self) -> tuple[int, int]:
        return self._preprocessor.height, self._preprocessor.width

    def preprocess(self, data: bytes) -> PreparedImage:
        return self._preprocessor(data)


class BlipCaptioner(Preprocessing):
    """``BlipForConditionalGeneration`` plus its processor, on one device, ready to caption batches."""

    def __init__(self, model_dir: Path, model: ModelSettings, generation: GenerationSettings, max_pixels: int) -> None:
        self.name = model.name
        self.revision = model.revision
        self._device = resolve_device(model.device)
        self._dtype = resolve_dtype(model.dtype, self._device)
        self.device = str(self._device)
        self.dtype = str(self._dtype).removeprefix("torch.")
        self.untrained = is_untrained(model_dir)
        self._generation = generation
        # transformers' own annotations are looser than mypy --strict; hold both as Any.
        self._processor: Any = BlipProcessor.from_pretrained(model_dir)
        acceleration.set_threads(model.num_threads, self._device)
        loaded: Any = BlipForConditionalGeneration.from_pretrained(model_dir, dtype=self._dtype)
        self._model: Any = loaded.to(self._device).eval()
        self._apply_speedups(model)
        self._preprocessor = ImagePreprocessor.from_pretrained(model_dir, max_pixels=max_pixels)
        prompt = self._processor.tokenizer(model.prompt, return_tensors="pt")
        # BLIP's generate() drops the prompt's final [SEP], so generated text starts after len - 1 tokens.
        self._prompt_ids: torch.Tensor = prompt["input_ids"].to(self._device)
        self._prompt_mask: torch.Tensor = prompt["attention_mask"].to(self._device)
        self._prompt_len = int(self._prompt_ids.shape[1]) - 1

    def _apply_speedups(self, model: ModelSettings) -> None:
        if model.attention == "sdpa":
            acceleration.use_sdpa_attention(self._model)
        if model.quantize == "int8":
            if self._device.type != "cpu" or self._dtype != torch.float32:
                raise ValueError(
                    f"model.quantize: int8 runs on the CPU in float32 only; this model is on {self._device} "
                    f"in {self.dtype} (set model.device: cpu and model.dtype: float32, or quantize: none)"
                )
            acceleration.quantize_int8(self._model)
            self.dtype = "int8"
        if model.compile:
            acceleration.compile_model(self._model)

    def warm_up(self) -> None:
        """One real generate on a blank image, so the first request doesn't pay for lazy initialisation."""
        height, width = self.image_size
        self.caption_batch([CaptionJob(torch.zeros(3, height, width))])

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        return split_on_oom(self._caption_batch, jobs)

    # -- internals ---------------------------------------------------------------------------------

    def _beams_for(self, num_captions: int) -> int:
        return max(self._generation.num_beams, num_captions)

    def _caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        results: list[list[Caption] | None] = [None] * len(jobs)
        # Requests asking for more captions than there are beams need a wider search; group by beam count so
        # every other request in the batch keeps exactly the configured search (and its exact captions).
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(self._beams_for(job.num_captions), []).append(index)
        for beams, indices in groups.items():
            tensors = [jobs[i].pixel_values for i in indices]
            for i, captions in zip(indices, self._generate(tensors, beams), strict=True):
                results[i] = captions[: jobs[i].num_captions]
        # Beams that decode to the same text leave an image short of distinct captions: widen its search.
        for index, job in enumerate(jobs):
            beams = self._beams_for(job.num_captions)
            while len(results[index] or []) < job.num_captions and beams < 4 * job.num_captions + 4:
                beams *= 2
                results[index] = self._generate([job.pixel_values], beams)[0][: job.num_captions]
        return [captions or [] for captions in results]

    @torch.inference_mode()
    def _generate(self, tensors: list[torch.Tensor], beams: int) -> list[list[Caption]]:
        gen = self._generation
        pixel_values = torch.stack(tensors)
        if self._device.type == "cuda":
            pixel_values = pixel_values.pin_memory().to(self._device, non_blocking=True)
        pixel_values = pixel_values.to(self._device, dtype=self._dtype)
        batch = pixel_values.shape[0]
        out: Any = self._model.generate(
            pixel_values=pixel_values,
            input_ids=self._prompt_ids.expand(batch, -1).clone(),
            attention_mask=self._prompt_mask.expand(batch, -1),
            num_beams=beams,
            num_return_sequences=beams,
            max_length=gen.max_length,
            min_length=gen.min_length,
            length_penalty=gen.length_penalty,
            repetition_penalty=gen.repetition_penalty,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        texts = self._processor.batch_decode(out.sequences[:, self._prompt_len :], skip_special_tokens=True)
        scores = self._sequence_scores(out)
        captions: list[list[Caption]] = []
        for image in range(batch):
            seen: dict[str, float] = {}
            for k in range(image * beams, (image + 1) * beams):
                text = " ".join(texts[k].split())
                if text and text not in seen:
                    seen[text] = max(_MIN_CONFIDENCE, min(1.0, math.exp(scores[k])))
            ranked = sorted(seen.items(), key=lambda item: item[1], reverse=True)
            captions.append([Caption(text, confidence) for text, confidence in ranked])
        return captions

    def _sequence_scores(self, out: Any) -> list[float]:
        if getattr(out, "sequences_scores", None) is not None:
            return [float(s) for s in out.sequences_scores.float().cpu()]
        # Greedy search: mean log-probability of the generated tokens, as beam search would report it.
        steps = self._model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        generated = out.sequences[:, self._prompt_len :]
        pad_id = self._model.config.text_config.pad_token_id
        mask = (generated[:, : steps.shape[1]] != pad_id).float()
        total = (steps.float().nan_to_num(neginf=-1e4) * mask).sum(dim=1)
        return [float(s) for s in (total / mask.sum(dim=1).clamp(min=1)).cpu()]
