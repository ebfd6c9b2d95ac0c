"""The running set of continuous batching: images join between decoding steps and leave as soon as they end.

``DecodeEngine`` holds every live image's beams as rows of the decoder (decode_step.py), in blocks of one beam
width (usually one block: the configured ``num_beams``; a request for more captions than beams, or one whose
search is widened, decodes in a block of its width). Its owner (decode_loop.py) calls, between steps:
- ``admit(requests)``: the new images' vision pass, batched among them, then their prompt; their first token is
  chosen at once and their beams join the block of their width;
- ``leave(ids)``: those images' rows go (a client gone, a deadline passed);
- ``step()``: one token for every live row; images whose search ended leave, answered.
Each image's search follows transformers' beam-search rules (beam_rules.py), so its captions are what a
batched ``generate`` gives (tests/unit/model/test_continuous_parity.py).

An image whose beams decode to fewer distinct captions than it asked for is searched again with twice the beams
(BlipCaptioner does the same), re-using its image keys; it answers when that search ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from captioner.config import GenerationSettings
from captioner.model.beam_rules import BeamSearch, Candidate, GreedySearch, SearchRules, wider_beams
from captioner.model.captions import rank_captions
from captioner.model.decode_step import ImageKeys, ImagePool, RowCache, TextDecoder
from captioner.model.generation_options import early_stopping_of, unsupported_generation_options
from captioner.model.protocol import Caption, CaptionJob

logger = logging.getLogger("captioner.decode")

Search = BeamSearch | GreedySearch


class StepModel(Protocol):
    """What the engine needs of a loaded model (``BlipCaptioner``)."""

    @property
    def model(self) -> Any: ...

    @property
    def generation(self) -> GenerationSettings: ...

    def beams_for(self, num_captions: int) -> int: ...

    def decoder_prompt(self) -> torch.Tensor: ...

    def autocast(self) -> AbstractContextManager[Any]: ...

    def image_embeds(self, jobs: Sequence[CaptionJob]) -> torch.Tensor: ...

    def decode_tokens(self, sequences: Sequence[Sequence[int]]) -> list[str]: ...


@dataclass(frozen=True)
class DecodeRequest:
    request_id: int
    job: CaptionJob


@dataclass(frozen=True)
class Answer:
    """A request that left the running set by ending: its captions, or why it failed."""

    request_id: int
    captions: list[Caption] | None = None
    error: BaseException | None = None
    first_token_s: float = 0.0


@dataclass
class _Live:
    """One image in the running set."""

    request_id: int
    num_captions: int
    search: Search
    admitted_with: ImageKeys  # the keys of the images it was admitted with (shared, not copied)
    image_index: int  # its place among them: for a wider search
    arrived: float
    first_token_s: float = 0.0


@dataclass
class _Block:
    """The images decoding at one beam width: ``width`` consecutive rows each, in ``lives`` order."""

    width: int
    lives: list[_Live] = field(default_factory=list)
    cache: RowCache | None = None
    images: ImagePool | None = None
    tokens: torch.Tensor | None = None  # [rows]: the token each row feeds at the next step


class DecodeEngine:
    """The running set over one loaded ``BlipCaptioner``; every method runs on the one thread that owns it."""

    def __init__(self, captioner: StepModel) -> None:
        self._captioner = captioner
        self._decoder = TextDecoder(captioner.model)
        config = captioner.model.config.text_config
        gen = captioner.generation
        self._prompt = captioner.decoder_prompt()
        self._rules = SearchRules(
            max_length=gen.max_length,
            prompt_length=int(self._prompt.shape[1]),
            eos_token_id=int(config.sep_token_id),
            length_penalty=gen.length_penalty,
            early_stopping=early_stopping_of(captioner.model),
        )
        ignored = unsupported_generation_options(captioner.model.text_decoder.generation_config)
        if ignored:
            logger.warning(
                "batching.mode: continuous ignores the model's generation config %s; its captions may differ from "
                "static mode's", ", ".join(ignored)
            )  # fmt: skip
        self._min_length = gen.min_length
        self._repetition_penalty = gen.repetition_penalty
        self._pad_token_id = int(config.pad_token_id)
        self._blocks: dict[int, _Block] = {}
        self.steps = 0

    # -- what the loop asks ------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return sum(block.width * len(block.lives) for block in self._blocks.values())

    @property
    def idle(self) -> bool:
        return not self._blocks

    def live_ids(self) -> list[int]:
        return [live.request_id for block in self._blocks.values() for live in block.lives]

    @torch.inference_mode()
    def admit(self, requests: Sequence[DecodeRequest]) -> list[Answer]:
        """The new images' vision pass and prompt; their first tokens chosen, their beams in the running set."""
        if not requests:
            return []
        now = time.perf_counter()
        with self._captioner.autocast():
            embeds = self._captioner.image_embeds([r.job for r in requests])
            keys = self._decoder.image_keys(embeds)
        lives = [
            _Live(
                r.request_id,
                r.job.num_captions,
                self._search(self._captioner.beams_for(r.job.num_captions)),
                keys,
                i,
                now,
            )
            for i, r in enumerate(requests)
        ]
        return self._start(lives, keys)

    @torch.inference_mode()
    def leave(self, request_ids: set[int]) -> None:
        """These requests' rows go now; they get no answer."""
        for width, block in list(self._blocks.items()):
            kept = [live for live in block.lives if live.request_id not in request_ids]
            if len(kept) != len(block.lives):
                self._keep(block, [(live, list(range(width))) for live in kept], None)

    def fail_all(self, error: BaseException) -> list[Answer]:
        answers = [Answer(request_id, error=error) for request_id in self.live_ids()]
        self._blocks.clear()
        return answers

    @torch.inference_mode()
    def step(self) -> list[Answer]:
        """One decoding step for every live row; the answers of the images that ended."""
        answers: list[Answer] = []
        restarts: list[_Live] = []
        with self._captioner.autocast():
            for block in list(self._blocks.values()):
                assert block.cache is not None and block.images is not None and block.tokens is not None
                logits, cache = self._decoder.step(block.tokens, block.cache, block.images, block.width)
                block.cache = cache
                answers += self._choose(block, logits, restarts)
        self.steps += 1
        if restarts:
            answers += self._start(restarts, _own_keys(restarts))
        return answers

    # -- internals ---------------------------------------------------------------------------------

    def _search(self, width: int) -> Search:
        if width == 1:
            return GreedySearch(self._rules, self._pad_token_id)
        return BeamSearch(self._rules, width)

    def _start(self, lives: list[_Live], keys: ImageKeys) -> list[Answer]:
        """Feed the prompt for these images (one row each, ``keys`` theirs in order) and choose their first tokens;
        their beams then join the block of their width."""
        device = keys.keys[0].device
        with self._captioner.autocast():
            logits, cache = self._decoder.prefill(self._prompt.expand(len(lives), -1), keys)
        answers: list[Answer] = []
        restarts: list[_Live] = []
        by_width: dict[int, list[int]] = {}
        for index, live in enumerate(lives):
            by_width.setdefault(live.search.width, []).append(index)
        for width, indices in by_width.items():
            # Every beam of a new image starts from the prompt: its row, repeated (as generate expands the batch).
            rows = torch.tensor(indices, device=device).repeat_interleave(width)
            everyone = indices == list(range(len(lives)))
            joining = _Block(
                width,
                [lives[i] for i in indices],
                cache.select(rows),
                ImagePool(keys if everyone else keys.select(torch.tensor(indices, device=device))),
            )
            answers += self._choose(joining, logits.index_select(0, rows), restarts, joining=True)
            if joining.lives:
                self._merge(joining)
        if restarts:  # a search over by its first token (max_length), short of captions: wider at once
            answers += self._start(restarts, _own_keys(restarts))
        return answers

    def _merge(self, joining: _Block) -> None:
        block = self._blocks.get(joining.width)
        if block is None:
            self._blocks[joining.width] = joining
            return
        assert block.cache is not None and joining.cache is not None and block.images is not None
        assert joining.images is not None and block.tokens is not None and joining.tokens is not None
        block.lives += joining.lives
        block.cache = RowCache.concat([block.cache, joining.cache])
        block.images.append(joining.images.view)
        block.tokens = torch.cat([block.tokens, joining.tokens])

    def _choose(
        self, block: _Block, logits: torch.Tensor, restarts: list[_Live], joining: bool = False
    ) -> list[Answer]:
        """Each image's search takes this step's scores; ended images leave, the rest keep the rows they continue."""
        width, vocab = block.width, logits.shape[-1]
        now = time.perf_counter()
        if joining:
            for live in block.lives:
                live.first_token_s = live.first_token_s or now - live.arrived  # a wider search keeps its first
        kept: list[tuple[_Live, list[int]]] = []
        tokens: list[int] = []
        answers: list[Answer] = []
        logits = logits.float()
        if width == 1:
            scores = torch.log_softmax(self._processed(logits, block), dim=-1)
            best = scores.argmax(dim=-1)
            picked = scores.gather(1, best.unsqueeze(1)).squeeze(1)
            for live, token, log_prob in zip(block.lives, best.tolist(), picked.tolist(), strict=True):
                search = live.search
                assert isinstance(search, GreedySearch)
                search.advance_greedy(token, log_prob)
                if search.done:
                    answers += self._ended(live, restarts)
                else:
                    kept.append((live, [0]))
                    tokens.append(token)
        else:
            log_probs = self._processed(torch.log_softmax(logits, dim=-1), block)
            running = torch.tensor(
                [score for live in block.lives for score in _beam(live).running_scores], device=logits.device
            )
            totals = (log_probs + running.unsqueeze(1)).view(len(block.lives), width * vocab)
            values, indices = torch.topk(totals, 2 * width, dim=1)
            for live, row_values, row_indices in zip(block.lives, values.tolist(), indices.tolist(), strict=True):
                search = _beam(live)
                candidates = [Candidate(i // vocab, i % vocab, v) for v, i in zip(row_values, row_indices, strict=True)]
                parents = search.advance(candidates)
                if search.done:
                    answers += self._ended(live, restarts)
                else:
                    kept.append((live, parents))
                    tokens += [beam.tokens[-1] for beam in search.running]
        self._keep(block, kept, torch.tensor(tokens, dtype=torch.long, device=logits.device))
        return answers

    def _keep(self, block: _Block, kept: list[tuple[_Live, list[int]]], tokens: torch.Tensor | None) -> None:
        """The block holds only ``kept`` (each image with the rows its beams continue, in order) from now on."""
        position = {id(live): index for index, live in enumerate(block.lives)}
        if not kept:
            block.lives = []
            self._blocks.pop(block.width, None)
            return
        assert block.cache is not None and block.images is not None
        width = block.width
        rows = [position[id(live)] * width + parent for live, parents in kept for parent in parents]
        if rows != list(range(len(block.lives) * width)):
            block.cache = block.cache.select(torch.tensor(rows))
        images = [position[id(live)] for live, _ in kept]
        if len(images) != len(block.lives):
            block.images.keep(images)
        if tokens is None:  # rows leaving between steps: the survivors feed what they had chosen
            assert block.tokens is not None
            tokens = block.tokens.index_select(0, torch.tensor(rows, device=block.tokens.device))
        block.tokens = tokens
        block.lives = [live for live, _ in kept]

    def _ended(self, live: _Live, restarts: list[_Live]) -> list[Answer]:
        results = live.search.results()
        texts = self._captioner.decode_tokens([f.tokens for f in results])
        captions = rank_captions(texts, [f.score for f in results])[: live.num_captions]
        wider = wider_beams(found=len(captions), wanted=live.num_captions, beams=live.search.width)
        if wider is not None:
            live.search = self._search(wider)
            restarts.append(live)
            return []
        return [Answer(live.request_id, captions=captions, first_token_s=live.first_token_s)]

    def _processed(self, scores: torch.Tensor, block: _Block) -> torch.Tensor:
        """transformers' logits processors for this generation config, per row: ``min_length`` (no end token
        before it) and ``repetition_penalty`` (tokens already in the row's sequence, the prompt included)."""
        width = block.width
        lengths = [live.search.length for live in block.lives]
        short = [length < self._min_length for length in lengths]
        if any(short):
            rows = torch.tensor(short, device=scores.device).repeat_interleave(width)
            scores = scores.clone()
            scores[rows, self._rules.eos_token_id] = -torch.inf
        if self._repetition_penalty != 1.0:
            scores = self._penalised(scores, block)
        return scores

    def _penalised(self, scores: torch.Tensor, block: _Block) -> torch.Tensor:
        prompt = self._prompt[0].tolist()
        histories = [prompt + beam for live in block.lives for beam in _histories(live.search)]
        longest = max(len(h) for h in histories)
        # Padded with the row's own first token: a repeat of a token already there changes nothing.
        ids = torch.tensor([h + [h[0]] * (longest - len(h)) for h in histories], device=scores.device)
        seen = scores.gather(1, ids)
        penalty = self._repetition_penalty
        return scores.scatter(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))


def _own_keys(lives: list[_Live]) -> ImageKeys:
    """These images' keys, in order, for a new search (a wider one)."""
    parts = []
    for live in lives:
        source = live.admitted_with
        index = torch.tensor([live.image_index], device=source.keys[0].device)
        parts.append(source.select(index))
    return ImageKeys.concat(parts)


def _beam(live: _Live) -> BeamSearch:
    search = live.search
    assert isinstance(search, BeamSearch)
    return search


def _histories(search: Any) -> list[list[int]]:
    if isinstance(search, BeamSearch):
        return [list(beam.tokens) for beam in search.running]
    return [list(search.tokens)]
