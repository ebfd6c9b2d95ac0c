"""Drift monitoring: are the images coming in (and the captions going out) still like they were?

Per feature, a *reference* (its first ``reference_size`` observations, or a reference loaded from a file) is
compared with the *current window* (its last ``window`` observations, in a bounded deque) by the Population
Stability Index::

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

``e_i``/``a_i`` are the reference's/window's shares of bin ``i``; an empty bin counts as ``EPSILON`` (1e-4).
Rule of thumb: < 0.1 stable, 0.1-0.2 some change, > 0.2 a significant shift (the default alert threshold).

Numeric features are cut at the reference's quantiles (deciles with ``bins=10``) plus its min and max; equal cut
points (ties, constant features) are merged, and two extra bins catch values below the min and above the max.
Categorical features get one bin per category plus ``other``: ``format`` (the reference's formats, up to
``top_k``) and ``vocabulary`` (word tokens over the reference's ``top_k`` commonest caption words).

Once a reference is fixed, per-bin window counts are updated as values enter and leave the window, so
``observe_*`` is O(log bins) per feature and a PSI is O(bins). Alerts are evaluated every ``check_every``
observations and on ``scores()``/``report()``: ``on_alert(feature, psi)`` fires once when the PSI rises above
``psi_alert`` and re-arms when it falls back; it runs outside the lock and its exceptions are logged, not raised.
PSI is None until the reference is complete and the window holds ``min_window`` (default ``min(window, 50)``)
observations: a handful of requests would give noisy, alarming numbers.
"""

from __future__ import annotations

import bisect
import copy
import json
import logging
import math
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from captioner.observability.drift_features import (
    FEATURES,
    INPUT_NUMERIC,
    InputFeatures,
    OutputFeatures,
)

log = logging.getLogger(__name__)

EPSILON = 1e-4
SNAPSHOT_VERSION = 1


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPSILON) -> float:
    """Population Stability Index of two distributions over the same bins (shares summing to 1)."""
    if len(expected) != len(actual):
        raise ValueError(f"bins differ: {len(expected)} expected, {len(actual)} actual")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, eps), max(a, eps)
        total += (a - e) * math.log(a / e)
    return total


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics; exact on ties (so equal cut points merge)."""
    lo, frac = divmod(q * (len(ordered) - 1), 1.0)
    a, b = ordered[int(lo)], ordered[min(int(lo) + 1, len(ordered) - 1)]
    return a if a == b else a + (b - a) * frac


T = TypeVar("T")


class _Feature(Generic[T]):
    """One feature's reference and window. Not thread-safe: DriftMonitor holds its lock around every call."""

    def __init__(self, window: int) -> None:
        self.window: deque[T] = deque(maxlen=window)
        self.reference: list[T] = []  # the first observations, until the reference is fixed
        self.expected: list[float] | None = None  # reference share per bin, once fixed
        self.counts: list[int] = []  # window count per bin, once fixed
        self.ref_n = 0
        self.alerting = False
        self.since_check = 0

    def add(self, value: T, reference_size: int, bins: int) -> None:
        fixed = self.expected is not None
        if not fixed:
            self.reference.append(value)
            self.ref_n += 1
        if fixed and len(self.window) == self.window.maxlen:
            for i in self._bins_of(self.window[0]):
                self.counts[i] -= 1
        self.window.append(value)
        if fixed:
            for i in self._bins_of(value):
                self.counts[i] += 1
        elif self.ref_n >= reference_size:
            self._fix(bins)
            self.reference = []
            self._recount()

    def _recount(self) -> None:
        assert self.expected is not None
        self.counts = [0] * len(self.expected)
        for value in self.window:
            for i in self._bins_of(value):
                self.counts[i] += 1

    def psi(self, min_window: int) -> float | None:
        total = sum(self.counts)
        if self.expected is None or len(self.window) < min_window or total == 0:
            return None
        return psi(self.expected, [c / total for c in self.counts])

    def _fix(self, bins: int) -> None:
        raise NotImplementedError

    def _bins_of(self, value: T) -> tuple[int, ...]:
        raise NotImplementedError


class _Numeric(_Feature[float]):
    def __init__(self, window: int) -> None:
        super().__init__(window)
        self.cuts: list[float] = []

    def _fix(self, bins: int) -> None:
        ordered = sorted(self.reference)
        self.cuts = sorted({_quantile(ordered, i / bins) for i in range(bins + 1)})
        counts = [0] * (max(len(self.cuts) - 1, 1) + 2)
        for v in ordered:
            counts[self._bins_of(v)[0]] += 1
        self.expected = [c / len(ordered) for c in counts]

    def _bins_of(self, v: float) -> tuple[int, ...]:
        # bins: (-inf, c0) | [c0, c1] | (c1, c2] | ... | (c_n-2, c_n-1] | (c_n-1, inf)
        if v < self.cuts[0]:
            return (0,)
        if v > self.cuts[-1]:
            return (max(len(self.cuts) - 1, 1) + 1,)
        return (max(bisect.bisect_left(self.cuts, v), 1),)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "numeric", "n": self.ref_n, "cuts": self.cuts, "expected": self.expected}

    def load(self, spec: dict[str, Any]) -> None:
        cuts, expected = [float(c) for c in spec["cuts"]], [float(e) for e in spec["expected"]]
        if spec.get("kind") != "numeric" or not cuts or cuts != sorted(set(cuts)):
            raise ValueError("a numeric reference needs increasing cut points")
        if len(expected) != max(len(cuts) - 1, 1) + 2:
            raise ValueError("a numeric reference needs one share per bin")
        self.cuts, self.expected, self.ref_n, self.reference = cuts, expected, int(spec["n"]), []
        self._recount()


class _Categorical(_Feature[tuple[str, ...]]):
    def __init__(self, window: int, top_k: int) -> None:
        super().__init__(window)
        self.top_k = top_k
        self.categories: list[str] = []
        self.index: dict[str, int] = {}

    def _fix(self, bins: int) -> None:
        tally = Counter(token for tokens in self.reference for token in tokens)
        top = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_k]
        total = sum(tally.values())
        counts = [c for _, c in top]
        counts.append(total - sum(counts))
        self._set([w for w, _ in top], [c / total for c in counts] if total else [0.0] * len(top) + [1.0])

    def _set(self, categories: list[str], expected: list[float]) -> None:
        self.categories, self.expected = categories, expected
        self.index = {c: i for i, c in enumerate(categories)}

    def _bins_of(self, value: tuple[str, ...]) -> tuple[int, ...]:
        other = len(self.categories)
        return tuple(self.index.get(token, other) for token in value)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "categorical", "n": self.ref_n, "categories": self.categories, "expected": self.expected}

    def load(self, spec: dict[str, Any]) -> None:
        categories, expected = [str(c) for c in spec["categories"]], [float(e) for e in spec["expected"]]
        if spec.get("kind") != "categorical" or len(expected) != len(categories) + 1:
            raise ValueError("a categorical reference needs one share per category plus one for 'other'")
        self._set(categories, expected)
        self.ref_n, self.reference = int(spec["n"]), []
        self._recount()


class DriftMonitor:
    """PSI drift monitor over image and caption features; observe_* are cheap and thread-safe."""

    def __init__(
        self,
        *,
        window: int = 500,
        reference_size: int = 500,
        psi_alert: float = 0.2,
        bins: int = 10,
        reference: dict[str, Any] | None = None,
        on_alert: Callable[[str, float], None] | None = None,
        check_every: int = 25,
        min_window: int | None = None,
        top_k: int = 20,
    ) -> None:
        if min(window, reference_size, bins, check_every, top_k) < 1 or psi_alert <= 0:
            raise ValueError("window, reference_size, bins, check_every and top_k must be >= 1; psi_alert > 0")
        self._reference_size, self._psi_alert, self._bins = reference_size, psi_alert, bins
        self._on_alert, self._check_every = on_alert, check_every
        self._min_window = min(window, 50) if min_window is None else max(1, min(min_window, window))
        self._lock = threading.Lock()
        self._features: dict[str, _Numeric | _Categorical] = {
            name: _Categorical(window, top_k) if name in ("format", "vocabulary") else _Numeric(window)
            for name in FEATURES
        }
        self._source = "first N requests" if reference is None else "file"
        self.window, self.reference_size = window, reference_size
        if reference is not None:
            if reference.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"unsupported drift reference version {reference.get('version')!r}")
            for name, spec in reference.get("features", {}).items():
                if name in self._features:  # features missing from the file are learned from the first requests
                    self._features[name].load(spec)

    def observe_input(self, f: InputFeatures) -> None:
        numeric = (f.width, f.height, f.aspect, f.brightness, f.colourfulness, f.bytes)
        self._observe([*zip(INPUT_NUMERIC, map(float, numeric), strict=True), ("format", (f.format,))])

    def observe_output(self, f: OutputFeatures) -> None:
        pairs = [("confidence", float(f.confidence)), ("caption_length", float(f.caption_length))]
        self._observe([*pairs, ("vocabulary", tuple(f.words))])

    def _observe(self, items: list[tuple[str, Any]]) -> None:
        fired: list[tuple[str, float]] = []
        with self._lock:
            for name, value in items:
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                feature = self._features[name]
                feature.add(value, self._reference_size, self._bins)
                feature.since_check += 1
                if feature.since_check >= self._check_every:
                    self._check(name, feature, fired)
        self._fire(fired)

    def _check(self, name: str, feature: _Feature[Any], fired: list[tuple[str, float]]) -> float | None:
        feature.since_check = 0
        value = feature.psi(self._min_window)
        if value is not None and value > self._psi_alert and not feature.alerting:
            feature.alerting = True
            fired.append((name, value))
        elif feature.alerting and (value is None or value <= self._psi_alert):
            feature.alerting = False  # re-armed
        return value

    def _fire(self, fired: list[tuple[str, float]]) -> None:
        for name, value in fired:
            log.warning(
                "drift: %s PSI %.3f is over %.3f",
                name, value, self._psi_alert,
                extra={"event": "drift_alert", "feature": name, "psi": round(value, 4), "psi_alert": self._psi_alert},
            )  # fmt: skip
            if self._on_alert is not None:
                try:
                    self._on_alert(name, value)
                except Exception:
                    log.exception("drift on_alert callback failed for %s", name)

    @property
    def psi_alert(self) -> float:
        return self._psi_alert

    def scores(self) -> dict[str, float | None]:
        return self._evaluate()[0]

    def _evaluate(self) -> tuple[dict[str, float | None], dict[str, Any]]:
        fired: list[tuple[str, float]] = []
        with self._lock:
            scores = {name: self._check(name, f, fired) for name, f in self._features.items()}
            feats = self._features.values()
            reference = {
                "source": self._source,
                "size": max(f.ref_n for f in feats),
                "complete": all(f.expected is not None for f in feats),
            }
            state = {
                "reference": reference,
                "window": {"size": max(len(f.window) for f in feats)},
                "psi_alert": self._psi_alert,
                "features": {
                    name: {"psi": scores[name], "alert": f.alerting, "reference_n": f.ref_n, "window_n": len(f.window)}
                    for name, f in self._features.items()
                },
            }
        self._fire(fired)
        return scores, state

    def report(self) -> dict[str, Any]:
        return self._evaluate()[1]

    def reference_snapshot(self) -> dict[str, Any]:
        """The fixed parts of the reference, JSON-able; pass it (or save_reference's file) as ``reference=``."""
        with self._lock:
            features = {n: f.snapshot() for n, f in self._features.items() if f.expected is not None}
            snapshot: dict[str, Any] = {"version": SNAPSHOT_VERSION, "bins": self._bins, "features": features}
            return copy.deepcopy(snapshot)

    def save_reference(self, path: str | os.PathLike[str]) -> None:
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.reference_snapshot(), indent=1))
        tmp.replace(target)  # atomic: a reader never sees half a file

    @staticmethod
    def load_reference(path: str | os.PathLike[str]) -> dict[str, Any]:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"{path}: not a drift reference (version {SNAPSHOT_VERSION})")
        return data
