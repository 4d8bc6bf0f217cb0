"""Batch-norm folding: the served network has no BN layers and gives the trained network's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.model.fold_batchnorm import fold_batch_norm
from training.model.models import build_model
from training.packaging import ImageClassifier

# The registered model's calls print nothing on the console (the demo's, the stream's): Keras's
# "structure of `inputs`" warning, raised by a features model built on a one-element input list, fails here.
pytestmark = pytest.mark.filterwarnings("error::UserWarning:keras.src.models.functional")

SIZE = 32


def _trained_looking_cnn():
    """The default CNN with BN statistics far from identity (a fresh one would fold trivially)."""
    import keras

    model = build_model("cnn", image_size=SIZE, num_classes=3)
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma, variance = rng.uniform(0.5, 2, n), rng.uniform(0.1, 3, n)
            layer.set_weights([gamma, rng.normal(0, 1, n), rng.normal(0, 1, n), variance])
    return model


def _has_batch_norm(model) -> bool:
    import keras

    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_cnn_is_folded_and_its_outputs_do_not_change() -> None:
    model = _trained_looking_cnn()
    images = np.random.default_rng(1).random((16, SIZE, SIZE, 3), dtype=np.float32)

    folded = fold_batch_norm(model)

    assert folded is not model and _has_batch_norm(model) and not _has_batch_norm(folded)
    assert len(folded.layers) == len(model.layers) - 3  # one BN per conv block
    np.testing.assert_allclose(np.asarray(folded(images)), np.asarray(model(images)), rtol=1e-4, atol=1e-6)


def test_branched_or_unfoldable_models_are_served_unchanged() -> None:
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    branched = keras.layers.Add()([keras.layers.BatchNormalization()(conv), conv])
    residual = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(branched))
    assert fold_batch_norm(residual) is residual

    # BN after an activation is not a linear map of the convolution: nothing to fold.
    inputs = keras.Input((SIZE, SIZE, 3))
    activated = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    after_relu = keras.Model(inputs, keras.layers.BatchNormalization()(activated))
    assert fold_batch_norm(after_relu) is after_relu


def test_registered_classifier_serves_the_folded_network(tmp_path: Path) -> None:
    model = _trained_looking_cnn()
    model.save(tmp_path / "model.keras")
    (tmp_path / "config.json").write_text(json.dumps({"class_names": ["a", "b", "c"], "image_size": SIZE}))
    classifier = ImageClassifier()

    classifier.load(tmp_path / "model.keras", tmp_path / "config.json")

    assert not _has_batch_norm(classifier.keras_model)
    images = np.random.default_rng(2).random((300, SIZE, SIZE, 3), dtype=np.float32)  # over one inference batch
    np.testing.assert_allclose(classifier.probabilities(images), np.asarray(model(images)), rtol=1e-4, atol=1e-6)

    # Odd batch sizes reach the network padded to a few shapes; the padding never shows.
    shapes: list[int] = []
    infer = classifier._infer
    classifier._infer = lambda batch: (shapes.append(len(batch)), infer(batch))[1]
    for count in (1, 5, 33, 300):
        got = classifier.probabilities(images[:count])
        assert got.shape == (count, 3)
        np.testing.assert_allclose(got, np.asarray(model(images[:count])), rtol=1e-4, atol=1e-6)
    assert shapes == [1, 8, 64, 256, 64]  # powers of two below 32, multiples of 32 above
