"""margin_diversity's k-center: seeded with what humans already have, widened when the cap closes it."""

from __future__ import annotations

import numpy as np

from infra.core.labeling.strategies import DIVERSITY_POOL_FACTOR, MARGIN_DIVERSITY, Candidates, Known, select


def _unit(*rows: list[float]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _candidates(margins: list[float], vectors: np.ndarray, predicted: list[str] | None = None) -> Candidates:
    probabilities = np.asarray([[0.5 + m / 2, 0.5 - m / 2] for m in margins], dtype=np.float32)
    return Candidates(
        keys=[f"image-{i:03d}" for i in range(len(margins))],
        probabilities=probabilities,
        predicted=predicted or ["a"] * len(margins),
        embeddings=vectors,
        content_hashes=[f"hash-{i}" for i in range(len(margins))],
    )


def test_without_known_images_the_most_uncertain_goes_first() -> None:
    candidates = _candidates([0.1, 0.2, 0.3], _unit([1, 0], [0, 1], [1, 1]))
    assert select(candidates, 1, strategy=MARGIN_DIVERSITY).indices == [0]


def test_the_first_pick_is_the_one_farthest_from_what_humans_already_have() -> None:
    # The most uncertain candidate is near a labeled image (but not a near-duplicate of it).
    candidates = _candidates([0.1, 0.2], _unit([1, 0.05], [0, 1]))
    known = Known(embeddings=_unit([1, 0]), content_hashes=frozenset())
    selection = select(candidates, 1, strategy=MARGIN_DIVERSITY, known=known, min_distance=1e-4)
    assert selection.indices == [1]
    assert selection.near_duplicates == []


def test_copies_of_known_or_chosen_images_are_never_sent() -> None:
    vectors = _unit([1, 0], [0.0, 1], [1, 0.001], [0.001, 1], [1, 1])
    candidates = _candidates([0.1, 0.2, 0.3, 0.4, 0.5], vectors)
    known = Known(embeddings=_unit([1, 0.0005]), content_hashes=frozenset({"hash-4"}))
    selection = select(candidates, 5, strategy=MARGIN_DIVERSITY, known=known, min_distance=1e-3)
    # 0 and 2 copy the known image, 4 repeats a known hash, 3 copies pick 1.
    assert selection.indices == [1]
    assert sorted(selection.near_duplicates) == [0, 2, 3, 4]


def test_a_class_cap_that_closes_the_window_widens_it_instead_of_leaving_the_round_short() -> None:
    k = 2
    window = k * DIVERSITY_POOL_FACTOR
    count = window + 3
    rng = np.random.default_rng(0)
    vectors = _unit(*rng.normal(size=(count, 4)).tolist())
    margins = [i / count for i in range(count)]  # best-ranked first
    predicted = ["a"] * window + ["b"] * 3  # the window holds class a only
    candidates = _candidates(margins, vectors, predicted)
    selection = select(candidates, k, strategy=MARGIN_DIVERSITY, class_limits={"a": 1})
    assert len(selection.indices) == k
    assert [predicted[i] for i in selection.indices] == ["a", "b"]
    assert len(selection.class_capped) == window - 1
