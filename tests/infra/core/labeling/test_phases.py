"""Cold and warm: a cold model's window goes by typicality, a warm one's by margin spread with
representative k-means; neither sends outliers first."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from infra.core.labeling import phases, pixels
from infra.core.labeling.strategies import MARGIN_DIVERSITY, Candidates, Known, select
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_REQUESTS
from tests.infra.core.labeling.test_handoff import at, batch, paced, scored, spread
from tests.infra.core.labeling.test_pixels import shapes

__all__ = ["paced"]  # the fixture, shared with test_handoff


def test_cold_while_live_accuracy_is_low_or_candidates_collapse() -> None:
    balanced = ["a", "b", "c", "d"] * 5
    assert phases.phase(0.4, 50, 4, balanced, 0.3)[0] == phases.COLD  # under twice chance (0.5)
    assert phases.phase(0.55, 50, 4, balanced, 0.6)[0] == phases.COLD  # under the floor
    assert phases.phase(0.8, 5, 4, balanced, 0.3)[0] == phases.COLD  # too few of its own labels yet
    assert phases.phase(None, 0, 4, balanced, 0.3)[0] == phases.COLD  # no exploration label came back
    assert phases.phase(0.8, phases.MIN_LIVE_LABELS, 4, balanced, 0.3)[0] == phases.WARM
    # No exploration share: nothing will ever measure the model, so only a collapse makes it cold.
    assert phases.phase(None, 0, 4, balanced, 0.3, measured=False)[0] == phases.WARM
    assert phases.phase(None, 0, 4, ["a"] * 19 + ["b"], 0.3, measured=False)[0] == phases.COLD
    assert phases.phase(None, 0, 4, ["a"] * 19 + ["b"], 0.3)[0] == phases.COLD  # collapsed
    assert phases.phase(0.8, 50, 4, balanced, 0.3) == (phases.WARM, "warm")


def clusters_and_outliers(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Three tight clusters (30, 20, 10 images) and five outliers; the outliers have the lowest margins."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3] * 4
    points = [c + rng.normal(0, 0.3, (n, 8)) for c, n in zip(centres, (30, 20, 10), strict=True)]
    outliers = rng.normal(0, 1, (5, 8)) * 6 + 10
    vectors = np.vstack([*points, outliers]).astype(np.float32)
    margins = np.concatenate([rng.uniform(0.2, 0.4, 60), np.full(5, 0.01)])
    members = [0] * 30 + [1] * 20 + [2] * 10 + [-1] * 5
    return vectors, margins, members, list(range(60, 65))


def candidates(
    vectors: np.ndarray | None, margins: np.ndarray, thumbnails: list[bytes | None] | None = None
) -> Candidates:
    probabilities = np.stack([0.5 + margins / 2, 0.5 - margins / 2], axis=1)
    return Candidates(
        keys=[f"k{i:03d}" for i in range(len(margins))],
        probabilities=probabilities,
        predicted=["a"] * len(margins),
        embeddings=None if vectors is None else vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        thumbnails=thumbnails or [],
    )


def separating(dims: int = 8, seed: int = 5) -> Known:
    """Twelve labeled known images in three tight groups away from the candidates: 1-NN purity 1."""
    rng = np.random.default_rng(seed)
    points = np.vstack([np.eye(dims)[3 + g] * 4 + rng.normal(0, 0.3, (4, dims)) for g in range(3)])
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    return Known(embeddings=unit.astype(np.float32), labels=tuple(str(g) for g in range(3) for _ in range(4)))


def test_a_cold_window_takes_one_typical_image_per_cluster_and_no_outlier() -> None:
    vectors, margins, members, outliers = clusters_and_outliers()
    cold = select(candidates(vectors, margins), 3, strategy=MARGIN_DIVERSITY, phase=phases.COLD, known=separating())
    assert cold.strategy == phases.TYPICALITY
    # Twelve known images make fifteen clusters, so the big group may give two of the three typical points.
    assert not set(cold.indices) & set(outliers) and len({members[i] for i in cold.indices}) >= 2
    # Farthest-first on the same window starts with the outliers.
    assert set(select(candidates(vectors, margins), 3, strategy=MARGIN_DIVERSITY).indices) & set(outliers)


def test_a_cold_window_is_not_class_capped() -> None:
    vectors, margins, _, _ = clusters_and_outliers()
    window = candidates(vectors, margins)
    cold = select(window, 3, strategy=MARGIN_DIVERSITY, phase=phases.COLD, class_limits={"a": 0})
    warm = select(window, 3, strategy=MARGIN_DIVERSITY, phase=phases.WARM, class_limits={"a": 1})
    assert len(cold.picks) == 3 and len(warm.picks) == 1 and warm.class_capped


def test_a_warm_window_spreads_low_margins_by_representatives_not_outliers() -> None:
    rng = np.random.default_rng(1)
    # Eleven low-margin images in two groups, and one far from both, all within the pool.
    groups = [np.eye(6)[0] * 3 + rng.normal(0, 0.2, (6, 6)), np.eye(6)[1] * 3 + rng.normal(0, 0.2, (5, 6))]
    stray = -(np.eye(6)[0] * 3 + np.eye(6)[1] * 3)[None]  # away from both
    vectors = np.vstack([*groups, stray]).astype(np.float32)
    margins = np.concatenate([rng.uniform(0.05, 0.1, 11), [0.07]])
    warm = select(candidates(vectors, margins), 2, strategy=MARGIN_DIVERSITY, phase=phases.WARM)
    assert sorted(i < 6 for i in warm.indices) == [False, True] and 11 not in warm.indices
    # Farthest-first takes the stray.
    assert 11 in select(candidates(vectors, margins), 2, strategy=MARGIN_DIVERSITY).indices


def test_without_embeddings_a_cold_window_clusters_the_pixel_thumbnails() -> None:
    images = shapes(24, seed=21)
    margins = np.linspace(0.1, 0.3, len(images))
    window = candidates(None, margins, [pixels.thumbnail(c) for c in images])
    cold = select(window, 4, strategy=MARGIN_DIVERSITY, phase=phases.COLD)
    # No embedding to measure separation in: stratified random over the thumbnails' clusters.
    assert cold.strategy == phases.STRATIFIED and len(set(cold.indices)) == 4 and cold.fallback


def test_purity_is_high_when_the_features_separate_the_labels_and_low_when_not() -> None:
    known = separating()
    assert phases.purity(known.embeddings, list(known.labels)) == 1.0
    shuffled = [known.labels[i] for i in np.random.default_rng(0).permutation(len(known.labels))]
    mixed = phases.purity(known.embeddings, shuffled)
    assert mixed is not None and mixed < phases.PURITY_BAR
    assert phases.purity(known.embeddings[:5], list(known.labels[:5])) is None  # too few to say


def test_stratified_random_allots_picks_in_proportion_to_the_clusters() -> None:
    rng = np.random.default_rng(2)
    sizes = (120, 60, 20)
    points = np.vstack([np.eye(6)[g] * 5 + rng.normal(0, 0.2, (n, 6)) for g, n in enumerate(sizes)])
    group = np.repeat([0, 1, 2], sizes)
    order = list(rng.permutation(len(points)))
    picks = phases.stratified(points, 10, order)
    assert np.bincount(group[picks], minlength=3).tolist() == [6, 3, 1]
    # Within a stratum, the order decides: the first of each group in ``order`` is among the picks.
    for g in range(3):
        assert next(i for i in order if group[i] == g) in picks


def test_a_cold_window_is_stratified_random_unless_the_labeled_images_separate() -> None:
    vectors, margins, members, _ = clusters_and_outliers()
    window = candidates(vectors, margins)
    unlabeled = Known(embeddings=separating().embeddings)  # no label came back: nothing to measure
    scrambled = Known(embeddings=separating().embeddings, labels=("0", "1", "2") * 4)
    for known in (Known(), unlabeled, scrambled):
        cold = select(window, 6, strategy=MARGIN_DIVERSITY, phase=phases.COLD, known=known)
        assert cold.strategy == phases.STRATIFIED and len(cold.picks) == 6
        # Six picks from 65 in strata of about twenty: mostly the big clusters, as random would.
        assert sum(members[i] >= 0 for i in cold.indices) >= 5
    assert select(window, 6, strategy=MARGIN_DIVERSITY, phase=phases.COLD, known=separating()).strategy == (
        phases.TYPICALITY
    )


def test_a_window_collapsed_into_one_class_goes_cold_uncapped(paced: Settings) -> None:
    settings = paced.model_copy(
        update={"labeling_window_s": 0, "labeling_daily_budget": 8, "labeling_max_class_share": 0.25}
    )
    lake = Lake(settings)
    # Twelve unsure images, every one predicted "cat": the model is cold.
    rows = [(f"c{i}", 0.6 + i / 100, spread(i)) for i in range(12)]
    handed = scored(lake, batch(rows, when=at(9)), 0, settings, at(9))
    assert handed.sent == 8  # the cap (2 for "cat") would have stopped a warm window at 2
    assert set(lake.read(LABELING_REQUESTS, columns=["strategy"]).column("strategy").to_pylist()) == {phases.STRATIFIED}


@pytest.mark.parametrize("returned", [True, False], ids=["labels back", "no labels back"])
def test_a_cold_window_uses_typicality_once_returned_labels_show_the_embedding_separates(
    paced: Settings, returned: bool
) -> None:
    settings = paced.model_copy(update={"labeling_window_s": 0, "labeling_daily_budget": 40})
    lake = Lake(settings)
    rng = np.random.default_rng(4)

    def grouped(prefix: str) -> list[tuple[str, float, list[float]]]:
        """Twelve unsure images in three tight groups of the embedding, all predicted "cat": cold."""
        vectors = [np.eye(16)[g] + rng.normal(0, 0.05, 16) for g in range(3) for _ in range(4)]
        return [
            (f"{prefix}{n}", 0.6, (v / np.linalg.norm(v)).astype(np.float32).tolist()) for n, v in enumerate(vectors)
        ]

    first = scored(lake, batch(grouped("a"), when=at(9)), 0, settings, at(9))
    assert first.sent == 12
    if returned:  # humans label the first window's images by their group: 1-NN purity 1
        paths = [f"file:/in/a{n}.png" for n in range(12)]
        labels = [["cat", "dog", "cow"][n // 4] for n in range(12)]
        table = pa.table({"path": paths, "load_date": pa.array([at(9).date()] * 12, pa.date32()), "label": labels})
        lake.merge(IMAGES, IMAGES.conform(table), update={"label": "s.label"}, insert=False)
    scored(lake, batch(grouped("b"), when=at(10)), 1, settings, at(10))
    ledger = lake.read(LABELING_REQUESTS, columns=["path", "strategy"]).to_pylist()
    second = {r["strategy"] for r in ledger if "/b" in r["path"]}
    assert second == {phases.TYPICALITY if returned else phases.STRATIFIED}
