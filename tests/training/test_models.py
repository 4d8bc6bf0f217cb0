from pathlib import Path

import numpy as np
import pytest

from training.model.models import ModelError, build_model


def test_cnn_and_a_backbone_from_a_local_weights_file(tmp_path: Path) -> None:
    import keras

    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    cnn = build_model("cnn", image_size=32, num_classes=4)
    assert cnn(images).shape == (2, 4)

    backbone = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg"
    )
    weights = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(weights)
    model = build_model("MobileNetV3Small", image_size=32, num_classes=3, weights=weights)
    inner = next(layer for layer in model.layers if layer.name.startswith("MobileNetV3Small"))
    np.testing.assert_array_equal(inner.get_weights()[0], backbone.get_weights()[0])
    assert np.allclose(np.asarray(model(images)).sum(axis=1), 1.0, atol=1e-5)


def test_unknown_model_or_missing_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        build_model("vgg16", image_size=32, num_classes=2)
    with pytest.raises(ModelError, match="never downloaded"):
        build_model("resnet50", image_size=32, num_classes=2, weights=tmp_path / "missing.h5")
