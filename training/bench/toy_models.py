"""Registering a classifier for the scoring stream when training has not produced one (bench, tests).

The benchmark's default is training's default CNN (``training.model.models``), untrained: throughput
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


def small_cnn(image_size: int, num_classes: int, *, dense_units: int = 64, seed: int = 0) -> Any:
    """The label benchmark's network: the default CNN's shape (conv blocks, pooling, a ``dense``
    embedding, a ``probabilities`` output) at half its width, so that hundreds of retrainings fit
    in minutes on two cores."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def build_keras(kind: str, image_size: int, num_classes: int, seed: int = 0) -> Any:
    """``kind`` = "default" (training's default CNN) or "tiny"."""
    if kind == "tiny":
        return tiny_cnn(image_size, num_classes, seed)
    import keras

    from training.model.models import DEFAULT_MODEL, build_model

    keras.utils.set_random_seed(seed)
    return build_model(DEFAULT_MODEL, image_size=image_size, num_classes=num_classes)


def register_champion(
    settings: Settings,
    keras_model: Any,
    *,
    class_names: Sequence[str],
    image_size: int,
    experiment: str = BENCH_EXPERIMENT,
    reference_images: Any = None,
) -> str:
    """Log ``keras_model`` through ``training.packaging.log_classifier``, make it champion; return its version.

    ``reference_images`` (decoded held-out images) become its reference, as training's are.
    """
    from infra.registry import CHAMPION

    return register_version(
        settings,
        keras_model,
        class_names=class_names,
        image_size=image_size,
        alias=CHAMPION,
        experiment=experiment,
        reference_images=reference_images,
    )


def register_version(
    settings: Settings,
    keras_model: Any,
    *,
    class_names: Sequence[str],
    image_size: int,
    alias: str,
    experiment: str = BENCH_EXPERIMENT,
    reference_images: Any = None,
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
            reference_images=reference_images,
        )
    version = str(info.registered_model_version)
    set_alias(settings, alias, version)
    return version


SHAPES_SIZE = 32


def train_shapes_champion(settings: Settings, *, count: int = 1200, epochs: int = 6, seed: int = 0) -> str:
    """Train the default CNN briefly on the shapes generator's default images and make it champion.

    About 25 s on two cores; its reference is 400 held-out shapes. For the drift benchmark and
    tests, where the model must have learnt the distribution the windows are compared with.
    """
    import keras
    import numpy as np

    from infra.local.sample_data import SHAPE_CLASSES, ShapeKnobs, shape_images
    from training.data.preprocess import decode_images
    from training.model.models import build_model

    def shapes(n: int, knob_seed: int) -> tuple[Any, Any]:
        items = list(shape_images(ShapeKnobs(count=n, size=SHAPES_SIZE, seed=knob_seed, holdout_fraction=0)))
        images, _ = decode_images([data for _, data in items], SHAPES_SIZE)
        labels = np.asarray([SHAPE_CLASSES.index(name.split("/")[1]) for name, _ in items])
        return images, labels

    keras.utils.set_random_seed(seed)
    images, labels = shapes(count, seed + 1)
    model = build_model("cnn", image_size=SHAPES_SIZE, num_classes=len(SHAPE_CLASSES))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=epochs, batch_size=64, verbose=0)
    held_out, _ = shapes(400, seed + 2)
    return register_champion(
        settings,
        model,
        class_names=list(SHAPE_CLASSES),
        image_size=SHAPES_SIZE,
        reference_images=held_out,
    )
