"""Caption metrics with pycocoevalcap 1.2 (the COCO caption evaluation code), Java or not.

``score_captions`` runs the same scorers as ``pycocoevalcap.eval.COCOEvalCap`` on the same tokenised text:

- BLEU-1..4 (``Bleu(4)``, "closest" reference length) and CIDEr (``Cider``, the CIDEr-D formula COCO uses),
  always; ROUGE-L (``Rouge``) always, since it is pure Python too.
- METEOR 1.5 (``Meteor``) only when ``java`` is available: it is a Java program. Without Java the report says
  so instead of silently leaving the column out.
- SPICE never: it downloads Stanford CoreNLP models on first use, which an offline machine can't do.

Tokenisation is COCOEvalCap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1, also Java) when Java is there. Without
Java, ``python_ptb_tokenize`` stands in for it: lower-casing, PTB's splitting of clitics and punctuation, and
the same punctuation removal. It agrees with the Java tokenizer on ordinary caption text (the tests check a
sample); on exotic text the scores may differ slightly, and the report names the tokenizer used.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, plus the double quote that PTB turns into `` or ''.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"']
)
PTB_TOKENIZER = "PTBTokenizer (Stanford CoreNLP 3.4.1, Java)"
PYTHON_TOKENIZER = "python_ptb_tokenize (pure-Python stand-in for PTBTokenizer)"

# PTB escapes brackets; with -lowerCase the escapes come out lower-cased, and pycocoevalcap's punctuation list
# (upper case) then leaves them in. Reproduced as is, so the scores match.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Abbreviations whose final period PTB keeps on the word.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "ft", "vs", "etc", "inc", "ltd", "co", "corp", "prof", "gen",
     "col", "capt", "sgt", "lt", "ave", "blvd", "rd", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
     "oct", "nov", "dec", "no"}
)  # fmt: skip
_UNICODE = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- ", "\u2013": " -- "}
)
_NOT = re.compile(r"(\w)(n't)\b")
_CLITIC = re.compile(r"(\w)('(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(
    r"""
      (?:[^\W\d_]\.){2,}                 # acronyms: u.s. p.m. e.g.
    | \d+(?:[.,:]\d+)*                   # numbers: 3.5 1,000 10:30
    | n't | '(?:s|re|ve|ll|d|m)\b        # clitics split off above
    | [\w@#]+(?:[-'/&]\w+)*\.?           # words, hyphenated, o'clock, and/or (a trailing period checked later)
    | </?\w+>                           # SGML-like tags stay whole
    | [!?]+                             # "!!" is one token (and, unlike "!", not in the removal list)
    | \.\.\. | -- | \S                   # other punctuation, one mark at a time
    """,
    re.VERBOSE,
)


def python_ptb_tokenize(text: str) -> str:
    """``text`` tokenised and cleaned the way pycocoevalcap's PTBTokenizer does it, without Java."""
    text = _CLITIC.sub(r"\1 \2", _NOT.sub(r"\1 \2", text.translate(_UNICODE).replace("\n", " ").lower()))
    tokens: list[str] = []
    for token in _TOKEN.findall(text):
        if token.endswith(".") and len(token) > 1 and token.count(".") == 1 and token[:-1] not in _ABBREVIATIONS:
            tokens.extend((token[:-1], "."))  # a sentence's full stop, not part of the word
        else:
            tokens.append(_BRACKETS.get(token, token))
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


@dataclass
class CaptionScores:
    metrics: dict[str, float] = field(default_factory=dict)
    per_image: dict[Hashable, dict[str, float]] = field(default_factory=dict)
    tokenizer: str = PTB_TOKENIZER
    notes: list[str] = field(default_factory=list)
    # The tokenised text the scorers saw, so anyone can re-run pycocoevalcap on exactly the same input.
    tokenized_references: dict[Hashable, list[str]] = field(default_factory=dict)
    tokenized_candidates: dict[Hashable, list[str]] = field(default_factory=dict)


def find_java() -> str | None:
    return shutil.which("java")


def tokenize(
    captions: Mapping[Hashable, Sequence[str]], *, java: str | None, notes: list[str]
) -> tuple[dict[Hashable, list[str]], str]:
    """PTBTokenizer when Java is there (falling back, with a note, if it fails), else the Python stand-in."""
    if java is not None:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        try:
            tokenized = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
            return {k: list(tokenized[k]) for k in captions}, PTB_TOKENIZER
        except Exception as exc:  # e.g. the package folder is read-only: PTBTokenizer writes a temp file there
            notes.append(f"PTBTokenizer failed ({type(exc).__name__}: {exc}); used {PYTHON_TOKENIZER} instead")
    return {k: [python_ptb_tokenize(c) for c in v] for k, v in captions.items()}, PYTHON_TOKENIZER


def score_captions(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    *,
    java: str | None,
    meteor: bool = True,
) -> CaptionScores:
    """Corpus and per-image scores of ``candidates`` (one caption per image) against ``references``;
    ``meteor=False`` leaves METEOR out (its JVM) for a caller that needs CIDEr only (cascade calibration)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not candidates or set(references) != set(candidates):
        raise ValueError("references and candidates must cover the same, non-empty set of images")
    result = CaptionScores()
    keys = list(candidates)
    # Tokenise references and candidates in one call: one JVM start instead of two.
    joined: dict[Hashable, list[str]] = {("ref", k): list(references[k]) for k in keys}
    joined.update({("cand", k): [candidates[k]] for k in keys})
    tokenized, result.tokenizer = tokenize(joined, java=java, notes=result.notes)
    gts = {k: tokenized[("ref", k)] for k in keys}
    res = {k: tokenized[("cand", k)] for k in keys}
    result.tokenized_references, result.tokenized_candidates = gts, res
    result.per_image = {k: {} for k in keys}

    def record(name: str, corpus: float, each: Sequence[Any]) -> None:
        result.metrics[name] = float(corpus)
        for key, value in zip(keys, each, strict=True):
            result.per_image[key][name] = float(value)

    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print progress; stdout may carry the report
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            record(f"Bleu_{n + 1}", bleu[n], bleu_each[n])
        if java is not None and meteor:
            _meteor(gts, res, record, result.notes)
        elif java is not None:
            result.notes.append("METEOR not computed: not asked for")
        else:
            result.notes.append("METEOR not computed: it needs Java (`java` not found on PATH)")
        rouge, rouge_each = Rouge().compute_score(gts, res)
        record("ROUGE_L", rouge, rouge_each)
        cider, cider_each = Cider().compute_score(gts, res)
        record("CIDEr", cider, cider_each)
    result.notes.append("SPICE not computed: it needs Stanford CoreNLP models downloaded on first use")
    return result


def _meteor(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]], record: Any, notes: list[str]) -> None:
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        meteor = Meteor()
    except OSError as exc:
        notes.append(f"METEOR not computed: Java could not start ({exc})")
        return
    try:
        score, each = meteor.compute_score(gts, res)
        record("METEOR", score, each)
    except (ValueError, OSError) as exc:  # the JVM died or printed something other than scores
        notes.append(f"METEOR not computed: the METEOR jar failed ({type(exc).__name__}: {exc})")
    finally:
        _stop_meteor(meteor)


def _stop_meteor(meteor: Any) -> None:
    # pycocoevalcap 1.2 only stops the JVM in __del__; stop it now rather than whenever the GC runs.
    with meteor.lock:
        with contextlib.suppress(OSError):
            meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
