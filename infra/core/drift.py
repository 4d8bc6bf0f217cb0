"""Image drift: how far a window of live predictions is from what the model made of its held-out images.

Three statistics, each against its own threshold (docs/DRIFT.md):

* ``psi_confidence``: population stability index of the top-class confidence, in ten bins;
* ``psi_classes``: the same over the predicted-class mix;
* ``mmd``: squared maximum mean discrepancy between the window's embeddings and the reference's,
  with a Gaussian (RBF) kernel whose width is the median distance of the pooled sample, and a
  permutation test: the threshold is the ``1 - alpha`` quantile of the statistic over random
  relabellings of the pooled sample, so its false-alarm rate is ``alpha`` whatever the embedding.

The reference is the model's own (``infra.registry.Baseline``: probabilities and embeddings
of up to 512 held-out images, saved at registration). The stream keeps the window
(``streams.scoring.drift``); this module is pure and shared by it, the handlers' policy (PSI) and
``lakesight bench drift``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from infra.registry import Baseline

DRIFT_EVENT_TYPE = "lakesight.drift.detected"
EPSILON = 1e-4  # smoothing for bins absent on one side of PSI
CONFIDENCE_BINS = 10
ATYPICAL_IMAGES = 5


def psi(base: Counter, new: Counter) -> float:
    """Population stability index of ``new`` against ``base`` (counts per bin or class), smoothed."""
    keys = sorted(set(base) | set(new), key=str)
    p, q = _shares(base, keys), _shares(new, keys)
    return sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))


def _shares(counts: Counter, keys: list) -> list[float]:
    total = sum(counts.values()) or 1
    raw = [counts.get(k, 0) / total + EPSILON for k in keys]
    norm = sum(raw)
    return [r / norm for r in raw]


def confidence_bins(confidences: Sequence[float] | np.ndarray) -> Counter:
    """Counts of top-class confidences in ten equal bins of [0, 1]."""
    bins = np.clip((np.asarray(confidences, dtype=np.float64) * CONFIDENCE_BINS).astype(int), 0, CONFIDENCE_BINS - 1)
    return Counter(int(b) for b in bins)


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.25  # the usual "significant shift" level for PSI
    alpha: float = 0.005  # the MMD permutation test's false-alarm rate
    sample: int = 300  # embeddings per side in the MMD test (at most)
    permutations: int = 400  # the smallest p-value it can give is 1/401


@dataclass(frozen=True)
class Window:
    """What one window of scored images looked like."""

    confidences: np.ndarray  # (n,)
    predicted: Sequence[str]
    embeddings: np.ndarray | None  # (m, dims), a sample; None without embeddings
    paths: Sequence[str] = ()  # of the embeddings' rows, for the most atypical images


@dataclass
class Assessment:
    images: int
    psi_confidence: float
    psi_classes: float
    mmd: float | None = None
    mmd_threshold: float | None = None
    mmd_p_value: float | None = None
    reasons: list[str] = field(default_factory=list)
    atypical: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def score(self, thresholds: Thresholds) -> float:
        """The largest statistic as a share of its threshold (1 or more: drifted)."""
        ratios = [self.psi_confidence / thresholds.psi, self.psi_classes / thresholds.psi]
        if self.mmd is not None and self.mmd_threshold:
            ratios.append(self.mmd / self.mmd_threshold)
        return max(ratios)


def assess(window: Window, baseline: Baseline, thresholds: Thresholds, *, seed: int = 0) -> Assessment:
    """The window's statistics against the baseline, and which thresholds it crossed."""
    reference_top = baseline.probabilities.max(axis=1)
    reference_classes = Counter(baseline.class_names[i] for i in baseline.probabilities.argmax(axis=1))
    result = Assessment(
        images=len(window.confidences),
        psi_confidence=psi(confidence_bins(reference_top), confidence_bins(window.confidences)),
        psi_classes=psi(reference_classes, Counter(window.predicted)),
    )
    if result.psi_confidence > thresholds.psi:
        result.reasons.append("confidence")
    if result.psi_classes > thresholds.psi:
        result.reasons.append("classes")
    if window.embeddings is not None and baseline.embeddings is not None and len(window.embeddings) >= 2:
        _embedding_drift(result, window, baseline.embeddings, thresholds, np.random.default_rng(seed))
    return result


def _embedding_drift(
    result: Assessment, window: Window, reference: np.ndarray, thresholds: Thresholds, rng: np.random.Generator
) -> None:
    live = _sample(np.asarray(window.embeddings, dtype=np.float64), thresholds.sample, rng)
    base = _sample(np.asarray(reference, dtype=np.float64), thresholds.sample, rng)
    statistic, null = mmd_permutation_test(live, base, thresholds.permutations, rng)
    result.mmd = statistic
    result.mmd_threshold = float(np.quantile(null, 1 - thresholds.alpha))
    result.mmd_p_value = float((1 + np.sum(null >= statistic)) / (1 + len(null)))
    if result.mmd_p_value < thresholds.alpha:
        result.reasons.append("embeddings")
    result.atypical = most_atypical(np.asarray(window.embeddings, dtype=np.float64), base, window.paths)


def _sample(rows: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= cap else rows[rng.choice(len(rows), cap, replace=False)]


def _kernel(pooled: np.ndarray) -> np.ndarray:
    """RBF kernel matrix of the pooled sample, its width the median pairwise distance."""
    squared = np.sum(pooled**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0.0)
    upper = distances[np.triu_indices(len(pooled), 1)]
    width = float(np.median(upper)) or 1.0
    return np.exp(-distances / width)


def _mmd2(kernel: np.ndarray, first: np.ndarray) -> float:
    """Unbiased squared MMD for the split of the pooled sample given by the boolean mask ``first``."""
    x, y = first, ~first
    n, m = int(x.sum()), int(y.sum())
    kxx = kernel[np.ix_(x, x)]
    kyy = kernel[np.ix_(y, y)]
    kxy = kernel[np.ix_(x, y)]
    within_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def mmd_permutation_test(
    live: np.ndarray, reference: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """The squared MMD of ``live`` vs ``reference``, and its values under ``permutations`` random relabellings."""
    pooled = np.concatenate([live, reference])
    kernel = _kernel(pooled)
    first = np.zeros(len(pooled), dtype=bool)
    first[: len(live)] = True
    statistic = _mmd2(kernel, first)
    null = np.empty(permutations)
    for i in range(permutations):
        null[i] = _mmd2(kernel, rng.permutation(first))
    return statistic, null


def most_atypical(live: np.ndarray, reference: np.ndarray, paths: Sequence[str], k: int = ATYPICAL_IMAGES) -> list[str]:
    """The ``k`` window images least like the reference: lowest mean cosine similarity to it."""
    if not len(paths) or len(paths) != len(live):
        return []
    similarity = (live @ reference.T).mean(axis=1)
    return [paths[i] for i in np.argsort(similarity)[:k]]
