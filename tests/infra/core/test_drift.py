"""The drift statistics on arrays: PSI, the MMD permutation test, the assessment and the reference format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from infra.core.drift import Thresholds, Window, assess, confidence_bins, mmd_permutation_test, psi
from infra.registry import Baseline


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_psi_is_zero_for_equal_mixes_and_grows_with_the_shift() -> None:
    base = Counter({"a": 50, "b": 50})
    assert psi(base, Counter({"a": 500, "b": 500})) < 1e-9
    assert 0 < psi(base, Counter({"a": 60, "b": 40})) < psi(base, Counter({"a": 90, "b": 10}))
    assert psi(base, Counter({"a": 50, "b": 40, "c": 10})) > 0.25  # a class the reference never saw


def test_confidence_bins_cover_the_unit_interval() -> None:
    assert confidence_bins([0.0, 0.05, 0.5, 0.999, 1.0]) == Counter({0: 2, 5: 1, 9: 2})


def test_the_mmd_test_separates_shifted_embeddings_and_not_equal_ones() -> None:
    rng = np.random.default_rng(0)
    reference = unit_rows(rng.normal(size=(200, 16)))
    same = unit_rows(rng.normal(size=(100, 16)))
    shifted = unit_rows(rng.normal(size=(100, 16)) + 0.8)
    statistic, null = mmd_permutation_test(shifted, reference, 200, rng)
    assert statistic > null.max()
    statistic, null = mmd_permutation_test(same, reference, 200, rng)
    assert (null >= statistic).mean() > 0.05


def baseline(rng: np.random.Generator) -> Baseline:
    probabilities = rng.permuted(rng.dirichlet([8, 1, 1], size=300), axis=1)  # each class top about as often
    return Baseline(probabilities, ["a", "b", "c"], unit_rows(rng.normal(size=(300, 8))))


def test_an_assessment_names_each_threshold_crossed() -> None:
    rng = np.random.default_rng(1)
    reference = baseline(rng)
    top = reference.probabilities.max(axis=1)
    predicted = [reference.class_names[i] for i in reference.probabilities.argmax(axis=1)]
    calm = Window(top[:150], predicted[:150], unit_rows(rng.normal(size=(150, 8))), [f"p{i}" for i in range(150)])
    assert assess(calm, reference, Thresholds()).reasons == []
    unsure = Window(
        np.full(150, 0.4), ["a"] * 150, unit_rows(rng.normal(size=(150, 8)) + 1.0), [f"p{i}" for i in range(150)]
    )
    judged = assess(unsure, reference, Thresholds())
    assert judged.reasons == ["confidence", "classes", "embeddings"]
    assert judged.drifted and judged.score(Thresholds()) > 1
    assert len(judged.atypical) == 5 and set(judged.atypical) <= {f"p{i}" for i in range(150)}


def test_a_window_without_embeddings_is_judged_on_confidence_and_classes() -> None:
    rng = np.random.default_rng(2)
    judged = assess(Window(np.full(50, 0.4), ["a"] * 50, None), baseline(rng), Thresholds())
    assert judged.mmd is None and judged.reasons == ["confidence", "classes"]


def test_the_reference_survives_saving(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    saved = baseline(rng)
    saved.save(tmp_path / "reference.npz")
    loaded = Baseline.load(tmp_path / "reference.npz")
    assert loaded.class_names == ["a", "b", "c"]
    assert np.allclose(loaded.probabilities, saved.probabilities) and np.allclose(loaded.embeddings, saved.embeddings)
    Baseline(saved.probabilities, ["a", "b", "c"], None).save(tmp_path / "bare.npz")
    assert Baseline.load(tmp_path / "bare.npz").embeddings is None
