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

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

from captioner.config import GenerationSettings, ModelSettings
from captioner.model import acceleration, budgets, device_jpeg, static_decoding
from captioner.model.captions import rank_captions
from captioner.model.folder_quantization import folder_quantization
from captioner.model.preprocessing import ImagePreprocessor, PreparedImage
from captioner.model.protocol import Caption, CaptionJob, DecodeSink, StepDecoding
from captioner.model.weights import is_untrained

logger = logging.getLogger("captioner.model")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device, autocast: str = "none") -> torch.dtype:
    if requested == "auto":
        # Autocast computes in half precision from float32 weights.
        return torch.float16 if device.type == "cuda" and autocast == "none" else torch.float32
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
        self._dtype = resolve_dtype(model.dtype, self._device, model.autocast)
        self.device = str(self._device)
        self.dtype = str(self._dtype).removeprefix("torch.")
        self._autocast = _DTYPES.get(model.autocast)
        if self._autocast is not None:
            self.dtype = f"{model.autocast}-autocast"  # captions differ from float32's: part of the cache key
        self._static_cache = model.kv_cache == "static"
        self.untrained = is_untrained(model_dir)
        self._generation = generation
        # transformers' own annotations are looser than mypy --strict; hold both as Any.
        self._processor: Any = BlipProcessor.from_pretrained(model_dir)
        acceleration.set_threads(model.num_threads, self._device)
        loaded: Any = BlipForConditionalGeneration.from_pretrained(model_dir, dtype=self._dtype)
        self._model: Any = loaded.to(self._device).eval()
        self._apply_speedups(model, folder_quantization(model_dir))
        self._preprocessor = ImagePreprocessor.from_pretrained(model_dir, max_pixels=max_pixels)
        self._jpeg = None
        if model.jpeg_decode == "device":
            self._jpeg = device_jpeg.DeviceJpegDecoder(self._preprocessor, self._device)
        self._measure_threads = model.auto_threads == "measured" and model.num_threads == 0
        prompt = self._processor.tokenizer(model.prompt, return_tensors="pt")
        # BLIP's generate() drops the prompt's final [SEP], so generated text starts after len - 1 tokens.
        self._prompt_ids: torch.Tensor = prompt["input_ids"].to(self._device)
        self._prompt_mask: torch.Tensor = prompt["attention_mask"].to(self._device)
        self._prompt_len = int(self._prompt_ids.shape[1]) - 1

    def _apply_speedups(self, model: ModelSettings, folder_quantize: str = "none") -> None:
        if model.attention == "sdpa":
            acceleration.use_sdpa_attention(self._model, text=self._device.type != "cpu")
        quantize = model.quantize
        if quantize == "none" and folder_quantize == "int8":  # `captioner optimize --int8` wrote this folder
            if self._device.type == "cpu" and self._dtype == torch.float32 and self._autocast is None:
                quantize = "int8"
            else:
                logger.warning(
                    "the model folder asks for INT8 (quantization.json), which runs on the CPU in float32 only: "
                    "serving its float32 weights on %s in %s", self._device, self.dtype
                )  # fmt: skip
        if quantize == "int8":
            if self._device.type != "cpu" or self._dtype != torch.float32:
                raise ValueError(
                    f"model.quantize: int8 runs on the CPU in float32 only; this model is on {self._device} "
                    f"in {self.dtype} (set model.device: cpu and model.dtype: float32, or quantize: none)"
                )
            acceleration.quantize_int8(self._model)
            self.dtype = "int8"
        if model.compile:
            acceleration.compile_model(self._model, static_shapes=self._static_cache)

    def preprocess(self, data: bytes) -> PreparedImage:
        if self._jpeg is not None:
            return device_jpeg.defer(self._preprocessor, data)
        return self._preprocessor(data)

    def warm_up(self) -> None:
        """One real generate on a blank image, so the first request doesn't pay for lazy initialisation."""
        height, width = self.image_size
        self.caption_batch([CaptionJob(torch.zeros(3, height, width))])
        if self._measure_threads and self._device.type == "cpu":
            self._size_threads()

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        return split_on_oom(self._caption_batch, jobs)

    def measure_batch_limit(self, limit: int) -> int | None:
        """``batching.auto_batch_size``: the largest batch the GPU's free memory holds, up to ``limit``.

        The peak memory of a probe batch (with the most beams a request can ask for) gives the cost of one image;
        ``budgets.batch_size_for_memory`` turns it into a batch size. None off a GPU: the configured size stays.
        """
        if self._device.type != "cuda":
            return None
        height, width = self.image_size
        beams = max(self._generation.num_beams, self._generation.max_num_captions)
        probe = [CaptionJob(torch.zeros(3, height, width), beams)] * budgets.PROBE_BATCH
        torch.cuda.synchronize(self._device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(self._device)
        torch.cuda.reset_peak_memory_stats(self._device)
        self.caption_batch(probe)
        per_image = (torch.cuda.max_memory_allocated(self._device) - base) / budgets.PROBE_BATCH
        free, _ = torch.cuda.mem_get_info(self._device)
        cached = torch.cuda.memory_reserved(self._device) - torch.cuda.memory_allocated(self._device)
        size = budgets.batch_size_for_memory(per_image_bytes=per_image, available_bytes=free + cached, limit=limit)
        logger.info(
            "batch size %d from GPU memory: %.1f MiB per image, %.1f GiB free",
            size, per_image / 2**20, (free + cached) / 2**30,
        )  # fmt: skip
        return size

    def _size_threads(self) -> None:
        """``model.auto_threads: measured``: time one image's preprocessing and, on one thread, the model's share
        of a batch, then give the model the cores ``budgets.threads_from_costs`` says."""
        data = budgets.synthetic_photo()
        started = time.thread_time()
        prepared = self._preprocessor(data)
        other = time.thread_time() - started
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # one intra-op thread, this one: its CPU time is all the model's
        try:
            started = time.thread_time()
            self.caption_batch([CaptionJob(prepared.pixel_values)] * budgets.PROBE_BATCH)
            model = (time.thread_time() - started) / budgets.PROBE_BATCH
        finally:
            torch.set_num_threads(before)
        cores = acceleration.cpu_count()
        threads = budgets.threads_from_costs(cores=cores, model_cpu_s=model, other_cpu_s=other)
        torch.set_num_threads(threads)
        logger.info(
            "model threads %d of %d cores: the model costs %.1f ms of CPU per image, preprocessing %.1f ms",
            threads, cores, model * 1000, other * 1000,
        )  # fmt: skip

    # -- what continuous batching (decode_engine.py) runs the decoder with ----------------------------------

    @property
    def model(self) -> Any:
        return self._model

    @property
    def generation(self) -> GenerationSettings:
        return self._generation

    def beams_for(self, num_captions: int) -> int:
        """The beams a request runs with: the configured search, wider when it asks for more captions."""
        return max(self._generation.num_beams, num_captions)

    def decoder_prompt(self) -> torch.Tensor:
        """``[1, prompt_len]``: the tokens BLIP's generate feeds the decoder (bos, the prompt, no final [SEP])."""
        ids = self._prompt_ids[:, :-1].clone()
        ids[:, 0] = self._model.config.text_config.bos_token_id
        return ids

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self._autocast)

    @torch.inference_mode()
    def image_embeds(self, jobs: Sequence[CaptionJob]) -> torch.Tensor:
        """The vision tower's output for these images, ``[images, tokens, hidden]``."""
        pixel_values = self._to_device(self._pixels(jobs))
        with self.autocast():
            return self._model.vision_model(pixel_values=pixel_values)[0]  # type: ignore[no-any-return]

    def decode_tokens(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        texts: list[str] = self._processor.batch_decode([list(s) for s in sequences], skip_special_tokens=True)
        return texts

    def start_decoding(self, sink: DecodeSink) -> StepDecoding:
        """``batching.mode: continuous`` in this process: a thread of its own runs the decoding steps."""
        from captioner.model.decode_thread import ThreadDecoding

        return ThreadDecoding(self, sink)

    # -- internals ---------------------------------------------------------------------------------

    def _caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        pixels = self._pixels(jobs)
        results: list[list[Caption] | None] = [None] * len(jobs)
        # Requests asking for more captions than there are beams need a wider search; group by beam count so
        # every other request in the batch keeps exactly the configured search (and its exact captions).
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(self.beams_for(job.num_captions), []).append(index)
        for beams, indices in groups.items():
            tensors = [pixels[i] for i in indices]
            for i, captions in zip(indices, self._generate(tensors, beams), strict=True):
                results[i] = captions[: jobs[i].num_captions]
        # Beams that decode to the same text leave an image short of distinct captions: widen its search.
        for index, job in enumerate(jobs):
            beams = self.beams_for(job.num_captions)
            while len(results[index] or []) < job.num_captions and beams < 4 * job.num_captions + 4:
                beams *= 2
                results[index] = self._generate([pixels[index]], beams)[0][: job.num_captions]
        return [captions or [] for captions in results]

    def _pixels(self, jobs: Sequence[CaptionJob]) -> list[torch.Tensor]:
        """Each job's input tensor; JPEGs left encoded (``model.jpeg_decode: device``) decoded here, together."""
        encoded = [index for index, job in enumerate(jobs) if job.jpeg is not None]
        if not encoded:
            return [job.pixel_values for job in jobs]
        if self._jpeg is None:
            raise ValueError("a job holds an encoded JPEG, but model.jpeg_decode is not device")
        pixels = [job.pixel_values for job in jobs]
        decoded = self._jpeg([jobs[i].jpeg for i in encoded])  # type: ignore[misc]  # not None: filtered above
        for index, tensor in zip(encoded, decoded, strict=True):
            pixels[index] = tensor
        return pixels

    def _to_device(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """One batch tensor on the model's device in its dtype; a host batch is copied once, from pinned memory."""
        if all(t.device == self._device for t in tensors):
            return torch.stack(tensors).to(dtype=self._dtype)
        if any(t.device != torch.device("cpu") for t in tensors):  # some decoded on the device already
            tensors = [t.to(self._device, non_blocking=True) for t in tensors]
            return torch.stack(tensors).to(dtype=self._dtype)
        pixel_values = torch.stack(tensors)
        if self._device.type == "cuda":
            pixel_values = pixel_values.pin_memory().to(self._device, non_blocking=True)
        return pixel_values.to(self._device, dtype=self._dtype)

    @torch.inference_mode()
    def _generate(self, tensors: list[torch.Tensor], beams: int) -> list[list[Caption]]:
        gen = self._generation
        batch = len(tensors)
        extra: dict[str, Any] = {}
        if self._static_cache:
            # Fixed shapes: pad to the next power of two (the padding's captions are dropped below).
            tensors = tensors + [tensors[-1]] * (static_decoding.padded_size(batch) - batch)
            extra["cache"] = static_decoding.new_cache(self._model, max_length=gen.max_length)
        pixel_values = self._to_device(tensors)
        rows = pixel_values.shape[0]
        with self.autocast():
            out: Any = self._model.generate(
                pixel_values=pixel_values,
                input_ids=self._prompt_ids.expand(rows, -1).clone(),
                attention_mask=self._prompt_mask.expand(rows, -1),
                num_beams=beams,
                num_return_sequences=beams,
                max_length=gen.max_length,
                min_length=gen.min_length,
                length_penalty=gen.length_penalty,
                repetition_penalty=gen.repetition_penalty,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                **extra,
            )
        texts = self._processor.batch_decode(out.sequences[:, self._prompt_len :], skip_special_tokens=True)
        scores = self._sequence_scores(out)
        return [
            rank_captions(texts[image * beams : (image + 1) * beams], scores[image * beams : (image + 1) * beams])
            for image in range(batch)
        ]

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
