"""Which unsure images go to humans: the selection strategies, pure functions over arrays.

A strategy ranks candidates by how much a label would teach the model (their *score*, higher
first) and chooses up to ``k``, skipping pixel near-duplicates of what humans already have or
will have. ``margin_diversity``, the default, spreads its picks over the best-ranked candidates by
margin: by weighted k-means in a warm window, by typicality or cluster-stratified random in a cold
one (:mod:`infra.core.labeling.phases`), by greedy k-center when given no phase. docs/LABELING.md explains the
strategies and the benchmark behind the default. The hand-off (``infra.core.labeling.handoff``) and
``lakesight bench labeling`` both call :func:`select`, so the benchmark measures exactly what the
stream does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from infra.core.labeling import phases, pixels
from infra.hashing import stable_fraction

log = logging.getLogger(__name__)

THRESHOLD = "threshold"
RANDOM = "random"
LEAST_CONFIDENCE = "least_confidence"
MARGIN = "margin"
ENTROPY = "entropy"
MARGIN_DIVERSITY = "margin_diversity"
# Not a setting: the exploration share of every window (docs/LABELING.md), recorded as its strategy.
EXPLORE = "explore"
STRATEGIES = (THRESHOLD, RANDOM, LEAST_CONFIDENCE, MARGIN, ENTROPY, MARGIN_DIVERSITY)
DEFAULT_STRATEGY = MARGIN_DIVERSITY
# margin_diversity runs k-center over this many times k of the best-margin candidates: wide
# enough to spread out, narrow enough that every pick is still among the most uncertain. When the
# class cap or near-duplicates leave it short, the window widens by as many again.
DIVERSITY_POOL_FACTOR = 4

# What became of a candidate (``labeling_candidates.outcome``).
SENT = "sent"
NEAR_DUPLICATE = "near_duplicate"
CLASS_CAPPED = "class_capped"
NOT_CHOSEN = "not_chosen"


@dataclass(frozen=True)
class Candidates:
    """Images that may be sent: one row each, in arrival order."""

    keys: Sequence[str]  # image paths: a stable tie-break and the random strategy's hash
    probabilities: np.ndarray  # (n, classes)
    predicted: Sequence[str]
    embeddings: np.ndarray | None = None  # (n, dims), L2-normalised; rows of NaN have none
    content_hashes: Sequence[str | None] = ()
    thumbnails: Sequence[bytes | None] = ()  # pixels.thumbnail of each; none: no pixel near-duplicate check

    def __len__(self) -> int:
        return len(self.keys)

    def has_embeddings(self) -> bool:
        return self.embeddings is not None and len(self) > 0 and not np.isnan(self.embeddings).any()


@dataclass(frozen=True)
class Known:
    """What humans already have or will have: pending and labeled images."""

    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # one model version's
    content_hashes: frozenset[str] = frozenset()
    thumbnails: tuple[bytes, ...] = ()  # any model version's: pixels do not change with the model
    # The human labels of the ``embeddings`` rows, where they came back (None: not yet): whether the
    # features separate the classes (``phases.purity``) decides a cold window's way of choosing.
    labels: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Pick:
    index: int  # into the candidates
    score: float
    rank: int  # 1 = chosen first


@dataclass
class Selection:
    picks: list[Pick]
    strategy: str  # the one applied: margin when margin_diversity had no embeddings
    near_duplicates: list[int] = field(default_factory=list)
    class_capped: list[int] = field(default_factory=list)
    fallback: str | None = None  # why the requested strategy was not the one applied

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.picks]


def scores(strategy: str, candidates: Candidates) -> np.ndarray:
    """Informativeness of each candidate under ``strategy``: higher is sent first."""
    probs = np.asarray(candidates.probabilities, dtype=np.float64)
    if strategy == RANDOM:
        return np.asarray([1.0 - stable_fraction(f"labeling:{key}") for key in candidates.keys])
    if len(candidates) == 0:
        return np.zeros(0)
    top = np.sort(probs, axis=1)[:, ::-1]
    if strategy in (THRESHOLD, LEAST_CONFIDENCE):
        return 1.0 - top[:, 0]
    if strategy in (MARGIN, MARGIN_DIVERSITY):
        second = top[:, 1] if top.shape[1] > 1 else np.zeros(len(top))
        return 1.0 - (top[:, 0] - second)
    if strategy == ENTROPY:
        clipped = np.clip(probs, 1e-12, 1.0)
        return -(clipped * np.log(clipped)).sum(axis=1)
    raise ValueError(f"unknown labeling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def ranked(strategy: str, candidates: Candidates) -> tuple[list[int], np.ndarray]:
    """Candidate indices best first (ties by key, so replays choose the same), and their scores."""
    values = scores(strategy, candidates)
    order = sorted(range(len(candidates)), key=lambda i: (-values[i], candidates.keys[i]))
    return order, values


def select(
    candidates: Candidates,
    k: int,
    *,
    strategy: str = DEFAULT_STRATEGY,
    known: Known | None = None,
    min_distance: float = 0.0,
    class_limits: Mapping[str, int] | None = None,
    duplicate_fraction: float = 0.4,
    phase: str | None = None,
) -> Selection:
    """Up to ``k`` candidates under ``strategy``.

    ``class_limits`` caps the picks per predicted class (a class absent from it is uncapped).
    Every strategy skips pixel near-duplicates (:mod:`infra.core.labeling.pixels`, at
    ``duplicate_fraction``) of a known image or of a better-ranked candidate.

    ``phase`` (:mod:`infra.core.labeling.phases`; the hand-off passes it for ``margin_diversity``):
    ``cold`` chooses by typicality when the embedding separates ``known``'s labeled images, else by
    cluster-stratified random, uncapped; ``warm`` spreads ``margin_diversity``'s picks by
    representative k-means instead of farthest-first; ``None`` is farthest-first.
    ``margin_diversity`` also skips an image whose content hash is known or repeated, and, unless
    every candidate has a thumbnail, one whose embedding lies within ``min_distance``
    (cosine) of a known image or of an earlier pick. Without embeddings it falls back to
    ``margin`` and says why in ``fallback``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown labeling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    known = known or Known()
    if strategy == MARGIN_DIVERSITY and len(candidates) and not candidates.has_embeddings():
        selection = select(
            candidates,
            k,
            strategy=MARGIN,
            known=known,
            class_limits=class_limits,
            duplicate_fraction=duplicate_fraction,
            phase=phases.COLD if phase == phases.COLD else None,
        )
        selection.fallback = "the model gives no embeddings: margin_diversity falls back to margin"
        return selection
    order, values = ranked(strategy, candidates)
    copies = pixel_duplicates(candidates, order, known, duplicate_fraction)
    if candidates.thumbnails and all(t is not None for t in candidates.thumbnails):
        # The pixel check finds the copies; the embedding is for diversity only: distinct images
        # sit as close in it as copies do, so a distance there would skip distinct images.
        min_distance = 0.0
    order = [i for i in order if i not in copies]
    limits = dict(class_limits or {})
    if phase == phases.COLD:
        selection = _typical(candidates, order, values, k, known)
    elif strategy != MARGIN_DIVERSITY:
        selection = _take_in_order(candidates, order, values, k, strategy, limits)
    elif phase == phases.WARM:
        selection = _representative(candidates, order, values, k, known, min_distance, limits)
    else:
        selection = _k_center(candidates, order, values, k, known, min_distance, limits)
    selection.near_duplicates.extend(sorted(copies))
    return selection


def pixel_duplicates(candidates: Candidates, order: list[int], known: Known, fraction: float) -> set[int]:
    """Candidates whose thumbnail repeats a known image's or a better-ranked candidate's (in ``order``)."""
    if not candidates.thumbnails or not order:
        return set()
    images, valid = pixels.as_array(candidates.thumbnails)
    rows = np.flatnonzero(valid)
    if len(rows) == 0:
        return set()
    references, _ = pixels.as_array(known.thumbnails)
    _, to_known = pixels.nearest(images[rows], references)
    near, to_others = pixels.nearest(images[rows], images[rows], same_set=True)
    threshold = pixels.calibrated_threshold(np.concatenate([to_known, to_others], axis=1), fraction)
    slot = {int(index): n for n, index in enumerate(rows)}
    kept: set[int] = set()
    copies: set[int] = set()
    for index in order:
        n = slot.get(index)
        if n is None:
            continue
        repeats_kept = any(
            int(rows[j]) in kept for j, r in zip(near[n], to_others[n], strict=True) if j >= 0 and r < threshold
        )
        if to_known[n].min() < threshold or repeats_kept:
            copies.add(index)
        else:
            kept.add(index)
    return copies


def _take_in_order(
    candidates: Candidates, order: list[int], values: np.ndarray, k: int, strategy: str, limits: dict[str, int]
) -> Selection:
    selection = Selection(picks=[], strategy=strategy)
    for index in order:
        if len(selection.picks) >= k:
            break
        if not _within_class_limit(candidates.predicted[index], limits):
            selection.class_capped.append(index)
            continue
        selection.picks.append(Pick(index, float(values[index]), len(selection.picks) + 1))
    return selection


def _features(candidates: Candidates, known: Known) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What a cold window clusters: the embeddings, else the coarse pixel thumbnails; with the known images'."""
    if candidates.has_embeddings():
        assert candidates.embeddings is not None
        vectors = np.asarray(candidates.embeddings, np.float64)
        comparable = known.embeddings.size and known.embeddings.shape[1] == vectors.shape[1]
        return vectors, np.asarray(known.embeddings, np.float64) if comparable else None
    images, valid = pixels.as_array(candidates.thumbnails)
    if not candidates.thumbnails or not valid.all():
        return None, None
    references, _ = pixels.as_array(known.thumbnails)
    return pixels.coarse(images), pixels.coarse(references) if len(references) else None


def _typical(candidates: Candidates, order: list[int], values: np.ndarray, k: int, known: Known) -> Selection:
    """A cold window, uncapped: TypiClust over the features when they separate the labeled images
    (1-NN purity), else cluster-stratified random; without features, the random order."""
    selection = Selection(picks=[], strategy=phases.STRATIFIED)
    pool = _without_duplicates(candidates, order, np.zeros(len(candidates), dtype=bool), known, selection)
    features, references = _features(candidates, known)
    shuffled = sorted(range(len(pool)), key=lambda j: stable_fraction(f"labeling:{candidates.keys[pool[j]]}"))
    if features is None:
        chosen = [pool[j] for j in shuffled[:k]]
    elif _separates(candidates, known):
        selection.strategy = phases.TYPICALITY
        chosen = [pool[j] for j in phases.typical(features[pool], k, references)]
    else:
        chosen = [pool[j] for j in phases.stratified(features[pool], k, shuffled)]
    selection.picks = [Pick(index, float(values[index]), rank) for rank, index in enumerate(chosen, start=1)]
    return selection


def _separates(candidates: Candidates, known: Known) -> bool:
    """Whether the model's embedding separates the labeled known images (1-NN purity at the bar)."""
    if not candidates.has_embeddings() or len(known.labels) != len(known.embeddings):
        return False
    assert candidates.embeddings is not None
    rows = [i for i, label in enumerate(known.labels) if label is not None]
    if not rows or known.embeddings.shape[1] != candidates.embeddings.shape[1]:
        return False
    measured = phases.purity(known.embeddings[rows], [str(known.labels[i]) for i in rows])
    return measured is not None and measured >= phases.PURITY_BAR


def _representative(
    candidates: Candidates,
    order: list[int],
    values: np.ndarray,
    k: int,
    known: Known,
    min_distance: float,
    limits: dict[str, int],
) -> Selection:
    """A warm window: the lowest margins, spread by weighted k-means (the point nearest each centroid),
    then, if the cap or copies left it short, the next best-ranked."""
    selection = Selection(picks=[], strategy=MARGIN_DIVERSITY)
    if k <= 0 or not order:
        return selection
    assert candidates.embeddings is not None
    vectors = np.asarray(candidates.embeddings, dtype=np.float32)
    to_known = _distance_to_known(vectors, known)
    close = to_known < min_distance if min_distance > 0 else np.zeros(len(vectors), dtype=bool)
    pool = _without_duplicates(candidates, order, close, known, selection)
    window = pool[: k * DIVERSITY_POOL_FACTOR]
    spread = [window[j] for j in phases.representative(vectors[window], values[window], k)]
    picked: list[int] = []
    for index in spread + [i for i in pool if i not in set(spread)]:
        if len(picked) >= k:
            break
        if min_distance > 0 and picked and float((1.0 - vectors[picked] @ vectors[index]).min()) < min_distance:
            selection.near_duplicates.append(index)
        elif not _within_class_limit(candidates.predicted[index], limits):
            selection.class_capped.append(index)
        else:
            picked.append(index)
    selection.picks = [Pick(index, float(values[index]), rank) for rank, index in enumerate(picked, start=1)]
    return selection


def _within_class_limit(label: str, limits: dict[str, int]) -> bool:
    """Whether ``label`` may take one more pick; takes it from ``limits`` when so."""
    if label not in limits:
        return True
    if limits[label] <= 0:
        return False
    limits[label] -= 1
    return True


def _k_center(
    candidates: Candidates,
    order: list[int],
    values: np.ndarray,
    k: int,
    known: Known,
    min_distance: float,
    limits: dict[str, int],
) -> Selection:
    selection = Selection(picks=[], strategy=MARGIN_DIVERSITY)
    if k <= 0 or not order:
        return selection
    assert candidates.embeddings is not None
    vectors = np.asarray(candidates.embeddings, dtype=np.float32)
    to_known = _distance_to_known(vectors, known)
    close = to_known < min_distance if min_distance > 0 else np.zeros(len(vectors), dtype=bool)
    pool = _without_duplicates(candidates, order, close, known, selection)
    if not pool:
        return selection
    spread = _Spread(vectors[pool], to_known[pool], width=max(k, 1) * DIVERSITY_POOL_FACTOR)
    while len(selection.picks) < k:
        slot = spread.farthest_open()
        if slot is None:
            break
        index = pool[slot]
        if not _within_class_limit(candidates.predicted[index], limits):
            selection.class_capped.append(index)
        elif min_distance > 0 and spread.nearest[slot] < min_distance:
            selection.near_duplicates.append(index)
        else:
            selection.picks.append(Pick(index, float(values[index]), len(selection.picks) + 1))
            spread.pick(slot)
    return selection


class _Spread:
    """Greedy k-center over a window of the ranked pool, seeded with what humans already have.

    Each next pick is the open candidate farthest (cosine) from every pick so far and every known
    image; with nothing known and nothing picked, the best-ranked. The window holds ``width``
    candidates and widens by as many more when the class cap or near-duplicates close it before
    ``k`` picks, so a round is not left short while ranked candidates remain.
    """

    def __init__(self, vectors: np.ndarray, to_known: np.ndarray, *, width: int) -> None:
        self.vectors = vectors
        self.to_known = to_known
        self.width = width
        self.nearest = np.zeros(0)  # per slot in the window: distance to the nearest pick or known image
        self.open = np.zeros(0, dtype=bool)
        self.picked: list[np.ndarray] = []

    def farthest_open(self) -> int | None:
        """The open slot farthest from picks and known images (ties to the better rank), now closed."""
        while not self.open.any():
            if not self._widen():
                return None
        slot = int(np.argmax(np.where(self.open, self.nearest, -np.inf)))
        self.open[slot] = False
        return slot

    def pick(self, slot: int) -> None:
        vector = self.vectors[slot]
        self.picked.append(vector)
        self.nearest = np.minimum(self.nearest, 1.0 - self.vectors[: len(self.nearest)] @ vector)

    def _widen(self) -> bool:
        start = len(self.nearest)
        stop = min(start + self.width, len(self.vectors))
        if stop <= start:
            return False
        fresh = self.to_known[start:stop].astype(np.float64)
        if self.picked:
            similarity = self.vectors[start:stop] @ np.stack(self.picked).T
            fresh = np.minimum(fresh, 1.0 - similarity.max(axis=1))
        self.nearest = np.concatenate([self.nearest, fresh])
        self.open = np.concatenate([self.open, np.ones(stop - start, dtype=bool)])
        return True


def _without_duplicates(
    candidates: Candidates,
    order: list[int],
    close: np.ndarray,
    known: Known,
    selection: Selection,
) -> list[int]:
    """``order`` less the candidates that repeat a known image (by hash, or ``close`` by embedding) or each
    other's hash."""
    hashes = list(candidates.content_hashes) or [None] * len(candidates)
    seen = set(known.content_hashes)
    kept = []
    for index in order:
        digest = hashes[index]
        if (digest is not None and digest in seen) or close[index]:
            selection.near_duplicates.append(index)
            continue
        if digest is not None:
            seen.add(digest)
        kept.append(index)
    return kept


def _distance_to_known(vectors: np.ndarray, known: Known) -> np.ndarray:
    """Per candidate: cosine distance to the nearest known embedding (infinite when none is comparable)."""
    nearest = np.full(len(vectors), np.inf)
    if known.embeddings.size == 0 or known.embeddings.shape[1] != vectors.shape[1]:
        return nearest
    reference = np.asarray(known.embeddings, dtype=np.float32)
    for start in range(0, len(reference), 4096):  # bounded memory for a large labeled set
        similarity = vectors @ reference[start : start + 4096].T
        nearest = np.minimum(nearest, 1.0 - similarity.max(axis=1))
    return nearest
