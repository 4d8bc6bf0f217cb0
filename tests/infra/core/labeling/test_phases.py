"""Cold and warm: a cold model's window goes by typicality, a warm one's by margin spread with
representative k-means; neither sends outliers first."""

from __future__ import annotations

import numpy as np

from infra.core.labeling import phases, pixels
from infra.core.labeling.strategies import MARGIN_DIVERSITY, Candidates, select
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import LABELING_REQUESTS
from tests.infra.core.labeling.test_handoff import at, batch, paced, scored, spread
from tests.infra.core.labeling.test_pixels import shapes

__all__ = ["paced"]  # the fixture, shared with test_handoff


def test_cold_while_live_accuracy_is_low_or_candidates_collapse() -> None:
    balanced = ["a", "b", "c", "d"] * 5
    assert phases.phase(0.4, 50, 4, balanced, 0.3)[0] == phases.COLD  # under twice chance (0.5)
    assert phases.phase(0.55, 50, 4, balanced, 0.6)[0] == phases.COLD  # under the floor
    assert phases.phase(0.4, 5, 4, balanced, 0.3)[0] == phases.WARM  # too few labels to judge
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


def test_a_cold_window_takes_one_typical_image_per_cluster_and_no_outlier() -> None:
    vectors, margins, members, outliers = clusters_and_outliers()
    cold = select(candidates(vectors, margins), 3, strategy=MARGIN_DIVERSITY, phase=phases.COLD)
    assert cold.strategy == phases.TYPICALITY
    assert sorted(members[i] for i in cold.indices) == [0, 1, 2]
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
    assert cold.strategy == phases.TYPICALITY and len(set(cold.indices)) == 4 and cold.fallback


def test_a_window_collapsed_into_one_class_goes_by_typicality_uncapped(paced: Settings) -> None:
    settings = paced.model_copy(
        update={"labeling_window_s": 0, "labeling_daily_budget": 8, "labeling_max_class_share": 0.25}
    )
    lake = Lake(settings)
    # Twelve unsure images, every one predicted "cat": the model is cold.
    rows = [(f"c{i}", 0.6 + i / 100, spread(i)) for i in range(12)]
    handed = scored(lake, batch(rows, when=at(9)), 0, settings, at(9))
    assert handed.sent == 8  # the cap (2 for "cat") would have stopped a warm window at 2
    assert set(lake.read(LABELING_REQUESTS, columns=["strategy"]).column("strategy").to_pylist()) == {"typicality"}
