"""Cold and warm: which kind of choice a model's state calls for (docs/LABELING.md, "Cold and warm").

A *cold* model (its live accuracy on exploration labels under twice chance or a floor, or its
candidates collapsed into one predicted class) has margins and an embedding that say little about
the new images, and farthest-first picks outliers: it gets **typicality** (TypiClust): the
candidates are clustered in their feature space re-centred on them, and the most typical point of
each of the largest clusters no known image covers is taken. A *warm* one gets the lowest margins
spread by **representative diversity**: weighted k-means over the low-margin pool, the point
nearest each centroid. Pure functions over arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

COLD = "cold"
WARM = "warm"
TYPICALITY = "typicality"  # the strategy recorded for a cold window's picks
# Candidates collapse when this share of them (of at least MIN_COLLAPSE_COUNT) have one predicted class.
COLLAPSE_SHARE = 0.9
MIN_COLLAPSE_COUNT = 10
# Live accuracy decides only from this many returned exploration labels on.
MIN_LIVE_LABELS = 20
TYPICALITY_NEIGHBOURS = 20  # TypiClust's


def phase(accuracy: float | None, labels: int, classes: int, predicted: Sequence[str], floor: float) -> tuple[str, str]:
    """``(COLD or WARM, why)`` for a window whose model has ``accuracy`` on ``labels`` exploration labels."""
    bar = max(2.0 / max(classes, 1), floor)
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
