"""GPU smoke test: runs only where TensorFlow sees a GPU (the lent device machine), skips elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_visible():
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    import keras

    yield
    keras.mixed_precision.set_global_policy("float32")  # setup_device sets it process-wide


def test_mixed_precision_training_step_runs_on_the_gpu(gpu_visible) -> None:
    import tensorflow as tf

    from training.model.models import build_model
    from training.run.strategy import setup_device

    described = setup_device(mixed_precision=True)
    assert described.startswith("GPU x")

    model = build_model("cnn", image_size=32, num_classes=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.random((16, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 3, 16)
    history = model.fit(images, labels, epochs=1, batch_size=8, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert "GPU" in model.trainable_variables[0].value.device.upper()
    # The softmax head stays float32 under mixed_float16, so probabilities sum to one.
    probabilities = model.predict(images[:2], verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-3)
    assert tf.config.list_logical_devices("GPU")
