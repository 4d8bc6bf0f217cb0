"""Keras models: a small CNN (the default) and keras.applications backbones trained from scratch
or from a local weights file (nothing is ever downloaded).

Every model takes ``(size, size, 3)`` float32 images in [0, 1] (what :mod:`training.data.preprocess`
produces) and ends in a float32 softmax over the classes, so mixed precision keeps stable outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.errors import LakesightError

MODELS = ("cnn", "mobilenetv3small", "efficientnetb0", "resnet50")
DEFAULT_MODEL = "cnn"
# Caffe-style preprocessing ResNet50's published weights expect: BGR order, ImageNet means.
_RESNET_MEANS_BGR = (103.939, 116.779, 123.68)


class ModelError(LakesightError, ValueError):
    """Unknown model name or unusable weights file."""


def build_model(
    name: str,
    *,
    image_size: int,
    num_classes: int,
    dropout: float = 0.3,
    dense_units: int = 128,
    weights: str | Path | None = None,
) -> Any:
    """A fresh, uncompiled Keras model ``name`` for ``num_classes`` classes."""
    import keras

    name = name.lower()
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if weights is not None and not Path(weights).is_file():
        raise ModelError(f"weights file {weights} does not exist (weights are never downloaded)")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    is_cnn = name == "cnn"
    features = _cnn_features(inputs) if is_cnn else _backbone_features(name, inputs, image_size, weights)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(features)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None and name == "cnn":
        model.load_weights(str(weights))
    return model


def _cnn_features(inputs: Any) -> Any:
    """Three conv blocks and global pooling: about 0.1 M parameters.

    One convolution per block: on two CPU cores the scoring stream is bound by the model, and
    this costs a quarter of the two-conv blocks (41 vs 155 M multiply-adds at 64x64) while
    still passing the digits holdout target.
    """
    import keras

    x = inputs
    for block, filters in enumerate((32, 64, 128)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{block}")(x)
        x = keras.layers.Activation("relu", name=f"relu{block}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{block}")(x)
    return keras.layers.GlobalAveragePooling2D(name="gap")(x)


def _backbone_features(name: str, inputs: Any, image_size: int, weights: str | Path | None) -> Any:
    import keras
    import numpy as np

    shape = (image_size, image_size, 3)
    # The applications expect pixels in [0, 255]; ours are in [0, 1].
    x = keras.layers.Rescaling(255.0, name="to_255")(inputs)
    local = str(weights) if weights is not None else None
    if name == "mobilenetv3small":
        backbone = keras.applications.MobileNetV3Small(
            input_shape=shape, include_top=False, weights=local, pooling="avg", include_preprocessing=True
        )
    elif name == "efficientnetb0":
        backbone = keras.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=local, pooling="avg")
    else:
        # RGB -> BGR minus the means, as a fixed 1x1 convolution (serialisable, no Lambda layer).
        kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
        for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
            kernel[0, 0, rgb, bgr] = 1.0
        caffe = keras.layers.Conv2D(3, 1, trainable=False, name="caffe_preprocess")
        x = caffe(x)
        caffe.set_weights([kernel, -np.asarray(_RESNET_MEANS_BGR, dtype=np.float32)])
        backbone = keras.applications.ResNet50(input_shape=shape, include_top=False, weights=local, pooling="avg")
    return backbone(x)
