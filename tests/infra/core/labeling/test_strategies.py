"""The selection strategies on arrays: what each ranks first, and how margin_diversity spreads its picks."""

from __future__ import annotations

import numpy as np
import pytest

from infra.core.labeling.strategies import (
    ENTROPY,
    LEAST_CONFIDENCE,
    MARGIN,
    MARGIN_DIVERSITY,
    RANDOM,
    STRATEGIES,
    THRESHOLD,
    Candidates,
    Known,
    select,
)
from infra.errors import SettingsError
from infra.settings import get_settings


def unit(vectors: list[list[float]]) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def candidates(probabilities: list[list[float]], embeddings: list[list[float]] | None = None, **extra) -> Candidates:
    n = len(probabilities)
    probs = np.asarray(probabilities)
    return Candidates(
        keys=extra.get("keys", [f"img-{i:02d}" for i in range(n)]),
        probabilities=probs,
        predicted=extra.get("predicted", [f"c{int(np.argmax(p))}" for p in probs]),
        embeddings=None if embeddings is None else unit(embeddings),
        content_hashes=extra.get("hashes", [f"h{i}" for i in range(n)]),
    )


# Three classes. Row 0 is least confident but has a clear runner-up; row 1 has the smallest
# margin; row 2 spreads its mass evenly (highest entropy).
PROBS = [
    [0.40, 0.35, 0.25],
    [0.45, 0.44, 0.11],
    [0.42, 0.30, 0.28],
    [0.90, 0.05, 0.05],
]


@pytest.mark.parametrize(
    ("strategy", "first"),
    [(LEAST_CONFIDENCE, 0), (THRESHOLD, 0), (MARGIN, 1), (ENTROPY, 2), (MARGIN_DIVERSITY, 1)],
)
def test_each_uncertainty_strategy_ranks_its_own_measure_first(strategy: str, first: int) -> None:
    embeddings = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]
    chosen = select(candidates(PROBS, embeddings), 1, strategy=strategy)
    assert chosen.indices == [first]
    assert chosen.picks[0].rank == 1


def test_entropy_prefers_evenly_spread_mass() -> None:
    probs = [[0.5, 0.5, 0.0], [0.34, 0.33, 0.33]]
    assert select(candidates(probs), 1, strategy=ENTROPY).indices == [1]
    assert select(candidates(probs), 1, strategy=MARGIN).indices == [0]


def test_random_is_stable_and_ignores_confidence() -> None:
    probs = [[0.99, 0.01]] * 20 + [[0.5, 0.5]] * 20
    first = select(candidates(probs), 10, strategy=RANDOM).indices
    assert first == select(candidates(probs), 10, strategy=RANDOM).indices
    assert any(i < 20 for i in first) and any(i >= 20 for i in first)


def test_margin_diversity_spreads_picks_over_clusters_where_margin_piles_into_one() -> None:
    # The four most uncertain images are near-copies of one scene; two others are elsewhere.
    probs = [[0.50, 0.50]] * 4 + [[0.60, 0.40], [0.62, 0.38]]
    embeddings = [[1, 0.01 * i, 0] for i in range(4)] + [[0, 1, 0], [0, 0, 1]]
    by_margin = select(candidates(probs, embeddings), 3, strategy=MARGIN).indices
    spread = select(candidates(probs, embeddings), 3, strategy=MARGIN_DIVERSITY, min_distance=0.01)
    assert set(by_margin) <= {0, 1, 2, 3}
    assert spread.indices[0] == 0  # the most uncertain first
    assert set(spread.indices) == {0, 4, 5}


def test_near_duplicates_of_known_images_and_of_each_other_are_skipped_and_counted() -> None:
    probs = [[0.5, 0.5], [0.51, 0.49], [0.52, 0.48], [0.7, 0.3]]
    embeddings = [[1, 0, 0], [1, 0.001, 0], [0, 1, 0], [0, 0, 1]]
    known = Known(unit([[0, 1, 0.001]]), frozenset({"h3"}))
    chosen = select(candidates(probs, embeddings), 4, strategy=MARGIN_DIVERSITY, known=known, min_distance=0.01)
    # 1 is a copy of 0 (picked first); 2 is close to a known image; 3's bytes are known.
    assert chosen.indices == [0]
    assert sorted(chosen.near_duplicates) == [1, 2, 3]


def test_repeated_bytes_in_one_window_are_sent_once() -> None:
    probs = [[0.5, 0.5], [0.5, 0.5]]
    embeddings = [[1, 0], [0, 1]]
    chosen = select(candidates(probs, embeddings, hashes=["same", "same"]), 2, strategy=MARGIN_DIVERSITY)
    assert (len(chosen.picks), chosen.near_duplicates) == (1, [1])


@pytest.mark.parametrize("strategy", [MARGIN, MARGIN_DIVERSITY])
def test_a_class_cap_limits_one_predicted_class(strategy: str) -> None:
    probs = [[0.5, 0.5]] * 6
    embeddings = [[1, i, 0] for i in range(6)]
    predicted = ["cat"] * 5 + ["dog"]
    chosen = select(
        candidates(probs, embeddings, predicted=predicted), 4, strategy=strategy, class_limits={"cat": 2, "dog": 2}
    )
    labels = [predicted[i] for i in chosen.indices]
    assert labels.count("cat") == 2 and labels.count("dog") == 1
    assert chosen.class_capped


def test_without_embeddings_margin_diversity_falls_back_to_margin_and_says_so() -> None:
    chosen = select(candidates(PROBS), 2, strategy=MARGIN_DIVERSITY)
    assert chosen.strategy == MARGIN
    assert chosen.indices == select(candidates(PROBS), 2, strategy=MARGIN).indices
    assert "falls back to margin" in (chosen.fallback or "")


def test_unknown_strategy_is_refused_naming_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="margin_diversity"):
        select(candidates(PROBS), 1, strategy="smart")
    monkeypatch.setenv("LAKESIGHT_LABELING_STRATEGY", "smart")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert all(name in str(refused.value) for name in STRATEGIES)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LAKESIGHT_LABELING_WINDOW_S", "7", "does not divide a day"),
        ("LAKESIGHT_LABELING_MAX_CLASS_SHARE", "0", "greater than 0"),
        ("LAKESIGHT_LABELING_MIN_DISTANCE", "2", "less than or equal to 1"),
    ],
)
def test_out_of_range_knobs_are_settings_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        get_settings()
