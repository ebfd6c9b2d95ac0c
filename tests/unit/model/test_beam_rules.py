"""Beam search for one image, step by step, with transformers' rules (captioner/model/beam_rules.py): which
candidates finish, which go on, when the search is over. The same rules against the real decoder:
tests/integration/model/test_continuous_parity.py."""

from __future__ import annotations

import pytest

from captioner.model.beam_rules import BeamSearch, Candidate, GreedySearch, SearchRules, wider_beams

EOS = 2
PROMPT = 4


def rules(max_length: int = 20, length_penalty: float = 1.0, early_stopping: bool | str = False) -> SearchRules:
    return SearchRules(
        max_length=max_length,
        prompt_length=PROMPT,
        eos_token_id=EOS,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )


def cands(*triples: tuple[int, int, float]) -> list[Candidate]:
    return [Candidate(beam, token, score) for beam, token, score in triples]


def test_the_first_step_starts_from_one_beam_and_keeps_the_best_that_did_not_end() -> None:
    search = BeamSearch(rules(), width=2)
    assert search.running_scores == [0.0, -1.0e9]  # only beam 0 is live at first, as in transformers
    parents = search.advance(cands((0, 10, -1.0), (0, 11, -1.5), (0, 12, -2.0), (0, 13, -3.0)))
    assert parents == [0, 0]
    assert [b.tokens for b in search.running] == [[10], [11]]
    assert search.running_scores == [-1.0, -1.5]
    assert search.length == PROMPT + 1 and not search.done and search.finished == []


def test_an_ending_candidate_among_the_best_width_finishes_with_its_length_penalised_score() -> None:
    search = BeamSearch(rules(length_penalty=2.0), width=2)
    search.advance(cands((0, 10, -1.0), (0, 11, -1.5), (0, 12, -2.0), (0, 13, -3.0)))
    parents = search.advance(cands((1, EOS, -2.0), (0, 14, -2.5), (1, 15, -2.6), (0, EOS, -2.7)))
    # EOS of beam 1 ranks first: finished, 2 generated tokens -> -2 / 2**2. EOS at rank 4 is past the width.
    assert search.finished[0].tokens == (11, EOS) and search.finished[0].score == pytest.approx(-0.5)
    assert len(search.finished) == 1
    assert parents == [0, 1]  # the best two that did not end
    assert [b.tokens for b in search.running] == [[10, 14], [11, 15]]


def test_max_length_ends_every_candidate_the_best_width_finish_and_the_search_is_over() -> None:
    search = BeamSearch(rules(max_length=PROMPT + 2), width=2)
    search.advance(cands((0, 10, -1.0), (0, 11, -1.5), (0, 12, -2.0), (0, 13, -3.0)))
    parents = search.advance(cands((0, 14, -2.0), (1, 15, -2.2), (0, 16, -2.4), (1, 17, -2.6)))
    assert parents == [] and search.done
    assert [f.tokens for f in search.results()] == [(10, 14), (11, 15)]
    assert [f.score for f in search.results()] == [pytest.approx(-1.0), pytest.approx(-1.1)]


def full_search(early_stopping: bool | str = False, length_penalty: float = 1.0) -> BeamSearch:
    """Two finished captions (-0.5 and -0.75 after penalty) and two beams still running."""
    search = BeamSearch(rules(early_stopping=early_stopping, length_penalty=length_penalty), width=2)
    search.advance(cands((0, EOS, -0.5), (0, 10, -0.6), (0, 11, -0.7), (0, 12, -0.8)))
    search.advance(cands((0, EOS, -1.5), (1, 13, -1.6), (0, 14, -1.7), (1, 15, -1.8)))
    return search


def test_the_search_ends_once_no_running_beam_can_beat_the_worst_finished() -> None:
    search = full_search()
    assert len(search.finished) == 2
    # The best running beam scores -1.6 over 2 tokens = -0.8 < -0.75: nothing can improve (transformers' heuristic).
    assert search.done and not search.improvable


def test_the_search_goes_on_while_a_running_beam_could_still_win() -> None:
    search = BeamSearch(rules(), width=2)
    search.advance(cands((0, EOS, -0.5), (0, 10, -0.6), (0, 11, -0.7), (0, 12, -0.8)))
    search.advance(cands((0, EOS, -2.0), (1, 13, -1.2), (0, 14, -1.7), (1, 15, -1.8)))
    # Finished: -0.5 and -1.0; the best running beam's -1.2 / 2 = -0.6 beats -1.0.
    assert not search.done and search.improvable


def test_early_stopping_true_ends_when_every_slot_is_finished() -> None:
    search = BeamSearch(rules(early_stopping=True), width=2)
    search.advance(cands((0, EOS, -0.5), (0, 10, -0.6), (0, 11, -0.7), (0, 12, -0.8)))
    search.advance(cands((0, EOS, -2.0), (1, 13, -0.9), (0, 14, -1.7), (1, 15, -1.8)))
    assert len(search.finished) == 2 and search.done  # -0.9 / 2 could still win, but True stops at once


def test_early_stopping_never_with_a_positive_penalty_judges_by_the_longest_possible_caption() -> None:
    # With max_length 20 a running beam at -1.6 could end as -1.6 / 16 > -0.75: never stop early.
    assert not full_search(early_stopping="never").done
    assert full_search(early_stopping=False).done


def test_a_finished_list_keeps_only_the_best_width_entries() -> None:
    search = BeamSearch(rules(early_stopping="never"), width=2)
    search.advance(cands((0, EOS, -1.0), (0, 10, -1.1), (0, 11, -1.2), (0, 12, -1.3)))
    search.advance(cands((0, EOS, -2.2), (1, EOS, -2.4), (0, 13, -2.5), (1, 14, -2.6)))
    assert [f.score for f in search.finished] == [pytest.approx(-1.0), pytest.approx(-1.1)]
    assert [f.tokens for f in search.finished] == [(EOS,), (10, EOS)]


def test_greedy_stops_at_the_end_token_and_scores_the_mean_log_prob_without_padding() -> None:
    search = GreedySearch(rules(), pad_token_id=0)
    search.advance_greedy(10, -1.0)
    search.advance_greedy(0, -5.0)  # a padding token: left out of the mean, as BlipCaptioner's mask does
    assert not search.done
    search.advance_greedy(EOS, -2.0)
    assert search.done
    (result,) = search.results()
    assert result.tokens == (10, 0, EOS) and result.score == pytest.approx(-1.5)


def test_greedy_stops_at_max_length() -> None:
    search = GreedySearch(rules(max_length=PROMPT + 2), pad_token_id=0)
    search.advance_greedy(10, -1.0)
    search.advance_greedy(11, -1.0)
    assert search.done


def test_a_search_short_of_distinct_captions_is_widened_twice_over_up_to_a_bound() -> None:
    assert wider_beams(found=3, wanted=3, beams=3) is None
    assert wider_beams(found=2, wanted=3, beams=3) == 6
    assert wider_beams(found=2, wanted=3, beams=12) == 24
    assert wider_beams(found=2, wanted=3, beams=16) is None  # 4 x 3 + 4
