"""Cold and warm: which kind of choice a model's state calls for (docs/LABELING.md, "Cold and warm").

A *cold* model (no returned exploration labels of its own yet, or its live accuracy on them under
twice chance or a floor, or its candidates collapsed into one predicted class) has margins and an
embedding that say little about the new images, and farthest-first picks outliers. When its
features separate the labeled images (their leave-one-out 1-NN purity, :func:`purity`, reaches
``PURITY_BAR``) it gets **typicality** (TypiClust): the candidates are clustered in their feature
space re-centred on them, and the most typical point of each of the largest clusters no known
image covers is taken; when they do not (or too few labeled images say), **cluster-stratified
random** (:func:`stratified`): random within clusters, in proportion to their sizes, which is never
worse than random in expectation. A *warm* one gets the lowest margins spread by **representative
diversity**: weighted k-means over the low-margin pool, the point nearest each centroid. Pure
functions over arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

COLD = "cold"
WARM = "warm"
TYPICALITY = "typicality"  # the strategy recorded for a cold window's picks when the features separate
STRATIFIED = "stratified"  # ... and when they do not: cluster-stratified random
# Candidates collapse when this share of them (of at least MIN_COLLAPSE_COUNT) have one predicted class.
COLLAPSE_SHARE = 0.9
MIN_COLLAPSE_COUNT = 10
# A model is warm only once this many of its own exploration labels came back (fewer: cold). At 10,
# a model whose true accuracy is 0.8 shows under 0.5 in 0.6 % of windows.
MIN_LIVE_LABELS = 10
# Typicality needs features that separate the classes: the labeled images' leave-one-out 1-NN
# purity must reach this, measured on at least MIN_PURITY_LABELS of them.
PURITY_BAR = 0.5
MIN_PURITY_LABELS = 10
# Cluster-stratified random makes about one stratum per this many candidates.
STRATUM_SIZE = 20
TYPICALITY_NEIGHBOURS = 20  # TypiClust's


def phase(
    accuracy: float | None,
    labels: int,
    classes: int,
    predicted: Sequence[str],
    floor: float,
    *,
    measured: bool = True,
) -> tuple[str, str]:
    """``(COLD or WARM, why)`` for a window whose model has ``accuracy`` on ``labels`` exploration labels.

    ``measured=False`` (no exploration share: no label will ever measure the model) leaves the
    collapse alone to decide.
    """
    bar = max(2.0 / max(classes, 1), floor)
    if measured and (accuracy is None or labels < MIN_LIVE_LABELS):
        return COLD, f"{labels} exploration labels of this model version came back (warm from {MIN_LIVE_LABELS})"
    if accuracy is not None and labels >= MIN_LIVE_LABELS and accuracy < bar:
        return COLD, f"live accuracy {accuracy:.2f} on {labels} exploration labels is under {bar:.2f}"
    if len(predicted) >= MIN_COLLAPSE_COUNT:
        top, count = Counter(predicted).most_common(1)[0]
        if count / len(predicted) >= COLLAPSE_SHARE:
            return COLD, f"{count} of {len(predicted)} candidates are predicted {top!r}"
    return WARM, "warm"


def kmeans(
    points: np.ndarray, k: int, *, weights: np.ndarray | None = None, iterations: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Lloyd's k-means from a deterministic k-means++ start: ``(centroids, assignment)``."""
    n = len(points)
    k = max(1, min(k, n))
    w = np.ones(n) if weights is None else np.maximum(np.asarray(weights, np.float64), 1e-9)
    rng = np.random.default_rng(0)  # fixed: a replay clusters alike
    centroids = [points[int(np.argmax(w))]]
    for _ in range(1, k):
        gap = np.min(((points[:, None, :] - np.asarray(centroids)[None]) ** 2).sum(-1), axis=1) * w
        if gap.sum() <= 0:
            break
        centroids.append(points[int(rng.choice(n, p=gap / gap.sum()))])
    centre = np.asarray(centroids, np.float64)
    assignment = np.zeros(n, np.int64)
    for _ in range(iterations):
        distance = ((points[:, None, :] - centre[None]) ** 2).sum(-1)
        assignment = np.argmin(distance, axis=1)
        moved = centre.copy()
        for c in range(len(centre)):
            members = assignment == c
            if members.any():
                moved[c] = np.average(points[members], axis=0, weights=w[members])
        if np.allclose(moved, centre):
            break
        centre = moved
    return centre, assignment


def _recentred(points: np.ndarray, mean: np.ndarray) -> np.ndarray:
    centred = points - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.where(norms > 0, norms, 1.0)


def typical(features: np.ndarray, k: int, known: np.ndarray | None = None) -> list[int]:
    """TypiClust: up to ``k`` indices, the most typical point of each of the largest uncovered clusters.

    ``features`` and ``known`` are re-centred on the candidates' mean; as many clusters as known
    points plus ``k``. Clusters with a known point are covered and come last; the largest first.
    """
    n = len(features)
    if n == 0 or k <= 0:
        return []
    mean = features.mean(axis=0)
    points = _recentred(features.astype(np.float64), mean)
    others = (
        _recentred(known.astype(np.float64), mean)
        if known is not None and len(known)
        else np.zeros((0, points.shape[1]))
    )
    _, assignment = kmeans(np.vstack([points, others]), len(others) + k)
    mine, theirs = assignment[:n], set(assignment[n:].tolist())
    clusters = sorted(set(mine.tolist()), key=lambda c: (c in theirs, -int((mine == c).sum()), c))
    picks: list[int] = []
    taken: set[int] = set()
    while len(picks) < min(k, n):
        before = len(picks)
        for c in clusters:
            members = [i for i in np.flatnonzero(mine == c) if i not in taken]
            if members and len(picks) < k:
                best = int(members[int(np.argmax(_typicality(points[members])))])
                picks.append(best)
                taken.add(best)
        if len(picks) == before:
            break
    return picks


def _typicality(points: np.ndarray) -> np.ndarray:
    """Inverse mean distance to the nearest neighbours within the cluster (higher: more typical)."""
    if len(points) == 1:
        return np.ones(1)
    distance = np.sqrt(((points[:, None, :] - points[None]) ** 2).sum(-1))
    np.fill_diagonal(distance, np.inf)
    nearest = np.sort(distance, axis=1)[:, : min(TYPICALITY_NEIGHBOURS, len(points) - 1)]
    return 1.0 / (nearest.mean(axis=1) + 1e-9)


def purity(features: np.ndarray, labels: Sequence[str]) -> float | None:
    """Leave-one-out 1-NN purity: the share of labeled points whose nearest other point (cosine, after
    re-centring on them) has their label. None under ``MIN_PURITY_LABELS`` points."""
    if len(labels) < MIN_PURITY_LABELS or len(features) != len(labels):
        return None
    points = _recentred(np.asarray(features, np.float64), np.asarray(features, np.float64).mean(axis=0))
    similarity = points @ points.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argmax(similarity, axis=1)
    return float(np.mean([labels[int(j)] == label for j, label in zip(nearest, labels, strict=True)]))


def stratified(features: np.ndarray, k: int, order: Sequence[int]) -> list[int]:
    """Cluster-stratified random: up to ``k`` indices; k-means strata of about ``STRATUM_SIZE``, picks
    allotted in proportion to their sizes (largest remainders), each stratum's taken in ``order``
    (a random order: a stable hash of the keys)."""
    n = len(features)
    if n == 0 or k <= 0:
        return []
    if k >= n:
        return list(order)
    points = _recentred(np.asarray(features, np.float64), np.asarray(features, np.float64).mean(axis=0))
    _, assignment = kmeans(points, max(1, min(k, n // STRATUM_SIZE)))
    sizes = np.bincount(assignment)
    quota = sizes * k / n
    allotted = np.floor(quota).astype(int)
    for c in np.argsort(-(quota - allotted), kind="stable")[: k - int(allotted.sum())]:
        allotted[c] += 1
    picks = []
    for index in order:
        stratum = assignment[index]
        if allotted[stratum] > 0:
            allotted[stratum] -= 1
            picks.append(int(index))
    return picks


# Representative diversity clusters the pool into this many times k clusters and keeps the k
# heaviest: a lone outlier is a light cluster of its own instead of one of the k.
OVERCLUSTER = 2


def representative(features: np.ndarray, weights: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` indices: weighted k-means, the point nearest the centroid of each of the ``k``
    heaviest clusters, the heaviest first."""
    if len(features) == 0 or k <= 0:
        return []
    centre, assignment = kmeans(features.astype(np.float64), OVERCLUSTER * k, weights=weights)
    mass = [(float(weights[assignment == c].sum()), c) for c in range(len(centre))]
    picks: list[int] = []
    for _, c in sorted(mass, key=lambda pair: (-pair[0], pair[1])):
        members = np.flatnonzero(assignment == c)
        if len(members):
            distance = ((features[members] - centre[c]) ** 2).sum(-1)
            picks.append(int(members[int(np.argmin(distance))]))
    return picks[:k]
