"""Beam search for one image, one decoding step at a time, with the rules of transformers' ``generate`` (5.x).

Pure Python on a few numbers per step: the decode loop (decode_engine.py) hands each search the best
``2 * beams`` continuations of its running beams (accumulated log-probabilities, already summed and ranked by
torch, as transformers' ``_get_top_k_continuations`` does), and the search decides which become finished
captions, which beams go on, and whether the search is over. Nothing here knows about other images, so an image
can start or stop between any two steps.

The rules, as ``GenerationMixin._beam_search`` applies them to each image of a batch:
- the first step starts from one live beam (the others score -1e9, so all candidates come from it);
- of the ``2 * beams`` candidates, only those among the best ``beams`` that end (the end token, or
  ``max_length``) can become finished; they score ``sum_logprob / generated_length ** length_penalty`` and
  join the finished list if they beat its worst entry (it keeps the best ``beams``);
- the best ``beams`` candidates that did not end are the next step's running beams;
- nothing more is finished once no running beam can beat the worst finished one (the early-stop heuristic,
  with ``early_stopping`` False / True / "never" as in transformers), or once every slot is finished under
  ``early_stopping=True``;
- the search is over when that heuristic says so, when every candidate ended (``max_length``), or (early
  stopping True) when all slots are finished.
In a batched ``generate`` an image whose search is over keeps stepping until the whole batch is done, but its
finished list can no longer change: stopping it at once gives the same captions.

``GreedySearch`` is ``num_beams = 1``, transformers' ``_sample`` without sampling: the best token each step,
until the end token or ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# transformers' placeholder score for "no such beam" and its penalty for candidates that can't be chosen.
_NO_SCORE = -1.0e9


@dataclass(frozen=True)
class SearchRules:
    """What every search of one server shares: the generation settings and the prompt."""

    max_length: int  # tokens in all, the prompt included (as transformers counts for a decoder-only model)
    prompt_length: int  # the prompt's tokens fed to the decoder (its final [SEP] dropped, as BLIP's generate does)
    eos_token_id: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # transformers' generation_config.early_stopping: False, True or "never"


@dataclass(frozen=True)
class Candidate:
    """One continuation of a running beam: its parent beam (0-based), the new token, the accumulated log-prob."""

    beam: int
    token: int
    score: float


@dataclass(frozen=True)
class Finished:
    tokens: tuple[int, ...]  # the generated tokens, the end token included when the caption ended with it
    score: float  # sum of token log-probs / generated_length ** length_penalty


@dataclass
class Beam:
    tokens: list[int]
    score: float


def _first_beams(width: int) -> list[Beam]:
    return [Beam([], 0.0)] + [Beam([], _NO_SCORE) for _ in range(width - 1)]


@dataclass
class BeamSearch:
    """One image's beam search; ``advance`` once per decoding step until ``done``."""

    rules: SearchRules
    width: int  # num_beams (at least the captions asked for)
    running: list[Beam] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)  # best first, at most ``width``
    improvable: bool = True  # transformers' is_early_stop_heuristic_unsatisfied
    done: bool = False

    def __post_init__(self) -> None:
        if not self.running:
            self.running = _first_beams(self.width)

    @property
    def length(self) -> int:
        """The sequence length so far, the prompt included (transformers' ``cur_len``)."""
        return self.rules.prompt_length + len(self.running[0].tokens)

    @property
    def running_scores(self) -> list[float]:
        return [beam.score for beam in self.running]

    def advance(self, candidates: Sequence[Candidate]) -> list[int]:
        """Take this step's best ``2 * width`` candidates (best first); returns, for each running beam of the next
        step, the beam it continues (the rows of the decoder's cache to keep, in order). Empty once ``done``."""
        rules, width = self.rules, self.width
        length = self.length
        at_max = length + 1 >= rules.max_length
        ended = [at_max or c.token == rules.eos_token_id for c in candidates]
        self._finish(candidates[:width], ended[:width], length)
        nxt = [c for c, end in zip(candidates, ended, strict=True) if not end][:width]
        if len(nxt) < width:  # every candidate ended: transformers' "no valid continuation"
            self.done = True
            return []
        parents = [c.beam for c in nxt]
        self.running = [Beam([*self.running[c.beam].tokens, c.token], c.score) for c in nxt]
        self.improvable = self._still_improvable()
        all_finished = len(self.finished) == width
        if not self.improvable or (all_finished and rules.early_stopping is True):
            self.done = True
            return []
        return parents

    def _finish(self, best: Sequence[Candidate], ended: Sequence[bool], length: int) -> None:
        if not self.improvable:
            return
        if len(self.finished) == self.width and self.rules.early_stopping is True:
            return
        generated = length + 1 - self.rules.prompt_length
        penalty = generated**self.rules.length_penalty
        new = [
            Finished((*self.running[c.beam].tokens, c.token), c.score / penalty)
            for c, end in zip(best, ended, strict=True)
            if end
        ]
        if new:
            # Stable: on equal scores the older entry stays ahead, as in transformers' merge of old and new.
            self.finished = sorted([*self.finished, *new], key=lambda f: -f.score)[: self.width]

    def _still_improvable(self) -> bool:
        """transformers' ``_check_early_stop_heuristic`` after the step (``cur_len`` already one longer)."""
        rules = self.rules
        if len(self.finished) < self.width:
            return self.improvable and self.running[0].score / self._best_length() ** rules.length_penalty > _NO_SCORE
        worst = self.finished[-1].score
        return self.improvable and self.running[0].score / self._best_length() ** rules.length_penalty > worst

    def _best_length(self) -> int:
        rules = self.rules
        if rules.early_stopping == "never" and rules.length_penalty > 0.0:
            return rules.max_length - rules.prompt_length
        return self.length - rules.prompt_length

    def results(self) -> list[Finished]:
        """The finished captions, best first (what ``num_return_sequences = width`` returns)."""
        return list(self.finished)


@dataclass
class GreedySearch:
    """``num_beams = 1``: the best token each step. Its score is the mean log-probability of the tokens kept, the
    end token included and padding tokens left out, as BlipCaptioner computes it from greedy ``generate``."""

    rules: SearchRules
    pad_token_id: int
    tokens: list[int] = field(default_factory=list)
    total: float = 0.0
    counted: int = 0
    done: bool = False
    width: int = 1

    @property
    def length(self) -> int:
        return self.rules.prompt_length + len(self.tokens)

    def advance_greedy(self, token: int, log_prob: float) -> None:
        self.tokens.append(token)
        if token != self.pad_token_id:
            self.total += max(log_prob, -1.0e4)  # BlipCaptioner: nan_to_num(neginf=-1e4)
            self.counted += 1
        if token == self.rules.eos_token_id or self.length >= self.rules.max_length:
            self.done = True

    def results(self) -> list[Finished]:
        return [Finished(tuple(self.tokens), self.total / max(1, self.counted))]


def wider_beams(*, found: int, wanted: int, beams: int) -> int | None:
    """The beams for another search when beams decoding to the same text left fewer distinct captions than asked
    for (twice as many, up to ``4 * wanted + 4``, as BlipCaptioner widens); None: answer with what was found."""
    if found >= wanted or beams >= 4 * wanted + 4:
        return None
    return beams * 2
