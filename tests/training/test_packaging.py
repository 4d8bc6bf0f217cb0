"""Registered models pickle ``training.packaging.ImageClassifier`` by reference: one logged by an
earlier release (the fixture was logged by commit c841d20, before the module moves) must still load
and classify with today's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from infra.local.sample_data import png_bytes

LOGGED_BEFORE_THE_MOVE = Path(__file__).resolve().parents[1] / "fixtures" / "model-c841d20"


def test_a_model_logged_by_the_previous_release_loads_and_classifies() -> None:
    import mlflow

    model = mlflow.pyfunc.load_model(str(LOGGED_BEFORE_THE_MOVE))
    classifier = model.unwrap_python_model()
    assert type(classifier).__module__ == "training.packaging"
    result = classifier.classify([png_bytes(np.full((16, 16, 3), 250, np.uint8)), b"not an image"])
    assert result["label"][0] in ("dark", "light") and result["error"][0] is None
    assert result["label"][1] is None and result["error"][1]
    images, errors = classifier.decode([png_bytes(np.zeros((16, 16, 3), np.uint8))])
    assert images.shape == (1, 16, 16, 3) and errors == [None]


def test_batches_are_padded_to_a_few_shapes_and_small_ones_stay_small() -> None:
    from training.packaging import padded_rows

    assert [padded_rows(n, 32) for n in (1, 2, 3, 5, 17, 32, 33, 250)] == [1, 2, 4, 8, 32, 32, 64, 256]
    shapes = {padded_rows(n, 32) for n in range(1, 257)}
    assert len(shapes) == 5 + 8  # 1, 2, 4, 8, 16, then the multiples of 32 up to 256
    assert all(padded_rows(n, 32) >= n for n in range(1, 600))
