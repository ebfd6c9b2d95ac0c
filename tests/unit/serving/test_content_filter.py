"""Caption filtering: whole words and phrases, case-insensitive; a blocked caption gives way to the next, and an
answer left with none is the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.config import ConfigError, ContentSettings
from captioner.model.protocol import Caption
from captioner.serving.content_filter import (
    FALLBACK_CONFIDENCE,
    ContentFilter,
    Filtered,
    blocked_words,
    filter_captions,
    word_pattern,
)


@pytest.mark.parametrize(
    ("text", "blocked"),
    [
        ("an ass grazing", True),
        ("An ASS grazing", True),  # case-insensitive
        ("a glass vase", False),  # inside a word: not a whole word
        ("green grass", False),
        ("ass.", True),  # punctuation is a word boundary
        ("a hot  dog stand", True),  # a phrase, whatever the spaces between its words
        ("a hot dogs stand", False),
        ("a hotdog", False),
    ],
)
def test_whole_words_and_phrases_case_insensitive(text: str, blocked: bool) -> None:
    pattern = word_pattern(["ass", "hot dog"])
    assert pattern is not None
    assert (pattern.search(text) is not None) is blocked


def test_a_blocked_caption_gives_way_to_the_next_and_none_left_is_the_fallback() -> None:
    pattern = word_pattern(["cat"])
    captions = [Caption("a cat on a sofa", 0.9), Caption("a dog on a sofa", 0.5), Caption("two cats", 0.2)]
    assert filter_captions(captions, pattern, "an image") == Filtered([captions[1], captions[2]], 1, False)
    only_blocked = filter_captions([Caption("a cat", 0.9)], pattern, "an image")
    assert only_blocked == Filtered([Caption("an image", FALLBACK_CONFIDENCE)], 1, True)
    assert filter_captions(captions, None, "x") == Filtered(captions, 0, False)  # no words: as they are


def test_the_filter_counts_what_it_dropped_and_copies_nothing_when_nothing_is() -> None:
    seen: list[Filtered] = []
    content = ContentFilter(["cat"], "an image", on_filtered=seen.append)
    clean = [Caption("a dog", 0.9)]
    assert content.apply(clean) is None  # the common case: the answer goes out as it is
    assert content.apply([Caption("a CAT", 0.9), *clean]) == clean
    assert [(f.dropped, f.fallback) for f in seen] == [(1, False)]
    assert ContentFilter([], "an image").apply(clean) is None and not ContentFilter([], "x").enabled


def test_the_words_file_adds_one_word_or_phrase_per_line(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("# operator's list\nbadword\n\n  hot dog  # a phrase\n")
    found = blocked_words(ContentSettings(blocked_words=["other"], blocked_words_file=str(words)))
    assert found == ["other", "badword", "hot dog"]
    with pytest.raises(ConfigError, match=r"content\.blocked_words_file"):
        blocked_words(ContentSettings(blocked_words_file=str(tmp_path / "absent.txt")))
