"""Registering a classifier for the scoring stream when training has not produced one (bench, tests).

The benchmark's default is training's default CNN (``training.models``), untrained: throughput
does not depend on the weights. ``tiny`` is a very small CNN for tests and for measuring the
pipeline's own capacity when the model is not the bottleneck.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra.settings import Settings

BENCH_EXPERIMENT = "lakesight-bench"


def tiny_cnn(image_size: int, num_classes: int, seed: int = 0, *, embedding: bool = True) -> Any:
    """A ~1k-parameter CNN: conv, pooling, softmax.

    ``embedding=False`` leaves the output layer unnamed, like a network made elsewhere: it then
    serves without embeddings (``training.packaging``).
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    name = "probabilities" if embedding else None
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)(x)
    return keras.Model(inputs, outputs)


def build_keras(kind: str, image_size: int, num_classes: int, seed: int = 0) -> Any:
    """``kind`` = "default" (training's default CNN) or "tiny"."""
    if kind == "tiny":
        return tiny_cnn(image_size, num_classes, seed)
    import keras

    from training.models import DEFAULT_MODEL, build_model

    keras.utils.set_random_seed(seed)
    return build_model(DEFAULT_MODEL, image_size=image_size, num_classes=num_classes)


def register_champion(
    settings: Settings,
    keras_model: Any,
    *,
    class_names: Sequence[str],
    image_size: int,
    experiment: str = BENCH_EXPERIMENT,
) -> str:
    """Log ``keras_model`` through ``training.packaging.log_classifier``, make it champion; return its version."""
    from infra.registry import CHAMPION

    return register_version(
        settings, keras_model, class_names=class_names, image_size=image_size, alias=CHAMPION, experiment=experiment
    )


def register_version(
    settings: Settings,
    keras_model: Any,
    *,
    class_names: Sequence[str],
    image_size: int,
    alias: str,
    experiment: str = BENCH_EXPERIMENT,
) -> str:
    """Log ``keras_model`` through ``training.packaging.log_classifier`` and give it ``alias``
    (``challenger``: the stream shadow-scores with it); return its version."""
    import mlflow
    import numpy as np

    from infra.local.sample_data import png_bytes
    from infra.registry import configure_mlflow, ensure_experiment, set_alias
    from training.packaging import log_classifier

    configure_mlflow(settings)
    example = png_bytes(np.zeros((image_size, image_size, 3), dtype=np.uint8))
    with mlflow.start_run(experiment_id=ensure_experiment(settings, experiment)):
        info = log_classifier(
            keras_model,
            class_names=list(class_names),
            image_size=image_size,
            input_example=example,
            registered_model_name=settings.model_name,
        )
    version = str(info.registered_model_version)
    set_alias(settings, alias, version)
    return version
