"""Caption filtering: no caption with a blocked word leaves the server (``content.blocked_words`` and
``content.blocked_words_file``).

A word or phrase matches as a whole word, case-insensitively: "ass" blocks "an ass grazing" but not "a glass
vase" or "grass". A caption that contains one is dropped from the answer, so the next suggestion takes its place
(ask ``num_captions`` > 1 to have one); when every caption of an answer is dropped, the answer is
``content.fallback_caption`` alone. The cache keeps the model's captions as they were: a changed list applies to
the next answer, hit or not. ``captioner_filtered_captions_total`` counts the captions dropped,
``captioner_filtered_fallbacks_total`` the answers replaced.

No list ships: the maintained word-list packages found do not fit (docs/operations.md, "Caption filtering" says
why), so the operator brings one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from captioner.config import ConfigError, ContentSettings
from captioner.model.protocol import Caption

# A fallback says nothing about the image: the lowest confidence a caption can carry (the contract wants (0, 1]),
# so that a client keeping only confident captions drops it too.
FALLBACK_CONFIDENCE = 1e-6


def blocked_words(content: ContentSettings) -> list[str]:
    """``content.blocked_words`` and the file's lines (``#`` starts a comment); ``ConfigError`` if it can't be read."""
    words = list(content.blocked_words)
    if content.blocked_words_file:
        path = Path(content.blocked_words_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: content.blocked_words_file {path} cannot be read ({exc})") from None
        words += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [word for word in words if word.strip()]


def word_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching any of ``words`` as a whole word (None for no words). Inner spaces
    match any run of whitespace."""
    alternatives = sorted({r"\s+".join(map(re.escape, w.split())) for w in words if w.strip()}, key=len, reverse=True)
    if not alternatives:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class Filtered:
    captions: list[Caption]
    dropped: int  # captions removed
    fallback: bool  # every caption was removed: the answer is the fallback


def filter_captions(captions: Sequence[Caption], pattern: re.Pattern[str] | None, fallback: str) -> Filtered:
    """``captions`` without those ``pattern`` finds, in their order; the fallback alone if none is left."""
    if pattern is None:
        return Filtered(list(captions), 0, False)
    kept = [caption for caption in captions if pattern.search(caption.text) is None]
    dropped = len(captions) - len(kept)
    if kept or not captions:
        return Filtered(kept, dropped, False)
    return Filtered([Caption(fallback, FALLBACK_CONFIDENCE)], dropped, True)


OnFiltered = Callable[[Filtered], None]


class ContentFilter:
    """The configured filter, applied to each answer's captions (serving/use_case.py)."""

    def __init__(self, words: Sequence[str], fallback: str, *, on_filtered: OnFiltered | None = None) -> None:
        self.pattern = word_pattern(words)
        self.fallback = fallback
        self._on_filtered = on_filtered

    @classmethod
    def from_settings(cls, content: ContentSettings, on_filtered: OnFiltered | None = None) -> ContentFilter:
        return cls(blocked_words(content), content.fallback_caption, on_filtered=on_filtered)

    @property
    def enabled(self) -> bool:
        return self.pattern is not None

    def apply(self, captions: Sequence[Caption]) -> list[Caption] | None:
        """The captions to answer with; None when all may go out as they are (the common case: no copy)."""
        if self.pattern is None:
            return None
        filtered = filter_captions(captions, self.pattern, self.fallback)
        if not filtered.dropped:
            return None
        if self._on_filtered is not None:
            self._on_filtered(filtered)
        return filtered.captions
