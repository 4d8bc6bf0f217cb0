"""The training loop: one custom step (``GradientTape``, the strategy's loss average and gradient
update) for every strategy and every feed.

Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy (docs/PLATFORM.md), so local, multi-worker
and Horovod training share this loop instead of having three. It runs on Keras 3 (the default
stack) and on Keras 2 (the legacy stack, docs/LEGACY.md): it uses only what both have.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from infra.errors import UsageError
from training.data.feed import TrainFeed
from training.model.models import DEFAULT_MODEL, build_model
from training.run.strategy import TrainStrategy


def check_batch_splits(batch_size: int, replicas: int) -> None:
    """Refuse a global batch that does not split evenly over ``replicas`` (TensorFlow's all-reduce
    fails with "global_batch_size not divisible by num_replicas_in_sync", after the workers started).

    Refused rather than rounded: the batch size is a hyperparameter the run logs, and a run must
    train with the one it names. Smaller batches than replicas are raised to one image each.
    """
    if replicas > 1 and batch_size > replicas and batch_size % replicas:
        lower, upper = batch_size - batch_size % replicas, batch_size + replicas - batch_size % replicas
        raise UsageError(
            f"batch size {batch_size} does not split over {replicas} workers: choose a multiple of {replicas} "
            f"(--batch-size {lower} or {upper})"
        )


@dataclass
class HyperParams:
    """What a training run is asked to do; logged as the run's params."""

    model: str = DEFAULT_MODEL
    epochs: int = 20
    batch_size: int = 64  # global: split across the workers
    learning_rate: float = 2e-3
    dropout: float = 0.3
    dense_units: int = 128
    weights: str | None = None
    mixed_precision: bool = False
    seed: int = 0
    max_steps_per_epoch: int | None = None  # caps an epoch (tests, smoke runs)

    def as_params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class EpochMetrics:
    epoch: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    images: int

    def as_metrics(self) -> dict[str, float]:
        values = {"loss": self.loss, "accuracy": self.accuracy, "epoch_seconds": self.seconds}
        if self.val_loss is not None:
            values["val_loss"] = self.val_loss
        if self.val_accuracy is not None:
            values["val_accuracy"] = float(self.val_accuracy)
        return values


@dataclass
class FitResult:
    model: Any
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0  # images seen by all workers together

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1].val_accuracy if self.history else None


def weights_digest(model: Any) -> str:
    """A digest of every weight, to compare workers' models."""
    h = hashlib.sha256()
    for array in model.get_weights():
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def fit(
    train: TrainFeed,
    validation: tuple[np.ndarray, np.ndarray] | None,
    *,
    num_classes: int,
    hyper: HyperParams,
    strategy: TrainStrategy,
    train_rows: int | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> FitResult:
    """Train a fresh ``hyper.model`` on the ``train`` feed (images, label ids) under ``strategy``.

    Every worker reads its shard of the same rows; ``train_rows`` (the global count, the feed's
    own by default) fixes the steps per epoch so all workers take the same number of steps.
    Validation runs on the chief only.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(hyper.seed)
    # Checked again here: a worker with several GPUs has more replicas than the driver counted.
    check_batch_splits(hyper.batch_size, strategy.replicas)
    global_batch = max(hyper.batch_size, strategy.replicas)
    rows = train_rows if train_rows is not None else train.rows
    steps = max(1, math.ceil(rows / global_batch))
    if hyper.max_steps_per_epoch:
        steps = min(steps, hyper.max_steps_per_epoch)

    with strategy.scope():
        model = build_model(
            hyper.model,
            image_size=train.image_size,
            num_classes=num_classes,
            dropout=hyper.dropout,
            dense_units=hyper.dense_units,
            weights=hyper.weights,
        )
        schedule = keras.optimizers.schedules.CosineDecay(
            hyper.learning_rate, decay_steps=max(1, steps * hyper.epochs), alpha=0.02
        )
        optimizer: Any = strategy.prepare_optimizer(keras.optimizers.Adam(learning_rate=schedule))
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    strategy.start(model, optimizer)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return train.dataset(context, batch_size=context.get_per_replica_batch_size(global_batch), seed=hyper.seed)

    iterator = strategy.datasets(dataset_fn)

    def step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = strategy.average_loss(per_example_loss(y, probs), global_batch)
            scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
        strategy.apply_gradients(optimizer, tape, scaled, model.trainable_variables)
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), y), tf.float32))
        return loss, hits

    @tf.function
    def train_step(batch: Any) -> tuple[tf.Tensor, tf.Tensor]:
        return strategy.run_step(step, batch)

    predict = tf.function(lambda x: model(x, training=False))
    result = FitResult(model=model)
    started = time.perf_counter()
    for epoch in range(hyper.epochs):
        epoch_start = time.perf_counter()
        loss_sum, hit_sum = 0.0, 0.0
        for _ in range(steps):
            loss, hits = train_step(next(iterator))
            loss_sum += float(loss)
            hit_sum += float(hits)
        seconds = time.perf_counter() - epoch_start
        seen = steps * global_batch
        val_loss = val_accuracy = None
        if validation is not None and strategy.is_chief and len(validation[1]):
            val_loss, val_accuracy = _evaluate(predict, validation)
        metrics = EpochMetrics(epoch, loss_sum / steps, hit_sum / seen, val_loss, val_accuracy, seconds, seen)
        result.history.append(metrics)
        result.train_images += seen
        if on_epoch is not None and strategy.is_chief:
            on_epoch(metrics)
    result.train_seconds = time.perf_counter() - started
    strategy.average_state(model)
    return result


def per_example_loss(labels: Any, probs: Any) -> Any:
    """Sparse categorical cross-entropy per example: the function form, the same in Keras 2 and 3
    (their loss classes spell "no reduction" differently)."""
    import keras

    return keras.losses.sparse_categorical_crossentropy(labels, probs)


def _evaluate(predict: Callable[[Any], Any], data: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    images, labels = data
    probs = np.concatenate([np.asarray(predict(images[i : i + 256])) for i in range(0, len(images), 256)])
    loss = float(np.mean(np.asarray(per_example_loss(labels, probs))))
    return loss, float(np.mean(np.argmax(probs, axis=-1) == labels))


def architecture(hyper: HyperParams, *, image_size: int, num_classes: int) -> dict[str, Any]:
    """What :func:`training.model.models.build_model` needs to rebuild this run's network (no weights file:
    the trained weights are loaded into it)."""
    return {
        "name": hyper.model,
        "image_size": image_size,
        "num_classes": num_classes,
        "dropout": hyper.dropout,
        "dense_units": hyper.dense_units,
    }


def portable_copy(model: Any, hyper: HyperParams, *, num_classes: int) -> Any:
    """The trained model rebuilt outside any strategy scope, in float32, for saving and serving."""
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_model(**architecture(hyper, image_size=int(model.input_shape[1]), num_classes=num_classes))
        copy.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return copy
