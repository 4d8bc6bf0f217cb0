"""Inference-only rewrite of a trained network: batch normalisation folded into the convolution before it.

At inference a BatchNormalization after a Conv2D is a fixed per-channel scale and shift, so it
can live in the convolution's kernel and bias. On this project's 2-core machine the BN pass cost
about a third of the default CNN's scoring time (measured: 580 -> 870 images/s on one thread).

Only a plain chain of layers (the default CNN) is rebuilt. Anything else, and any rebuilt model
whose outputs differ from the original's on a probe batch, is served unchanged: the rewrite can
make scoring faster, never different.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("lakesight.inference")

PROBE_IMAGES = 8


def _foldable(conv: Any, norm: Any) -> bool:
    import keras

    if not (isinstance(conv, keras.layers.Conv2D) and isinstance(norm, keras.layers.BatchNormalization)):
        return False
    config = conv.get_config()
    return (
        config.get("activation") == "linear"
        and config.get("data_format", "channels_last") == "channels_last"
        and config.get("groups", 1) == 1
        and norm.axis in (-1, 3, [-1], [3])
    )


def _folded_conv(conv: Any, norm: Any) -> Any:
    import keras

    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(conv.bias).astype(np.float64) if conv.use_bias else 0.0
    channels = kernel.shape[-1]
    gamma = keras.ops.convert_to_numpy(norm.gamma).astype(np.float64) if norm.scale else np.ones(channels)
    beta = keras.ops.convert_to_numpy(norm.beta).astype(np.float64) if norm.center else np.zeros(channels)
    mean = keras.ops.convert_to_numpy(norm.moving_mean).astype(np.float64)
    variance = keras.ops.convert_to_numpy(norm.moving_variance).astype(np.float64)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    folded = keras.layers.Conv2D.from_config({**conv.get_config(), "use_bias": True})
    folded.build(conv.input.shape)
    folded.set_weights([(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)])
    return folded


def _rebuilt_chain(model: Any) -> Any | None:
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name=model.inputs[0].name)
    x, index, folds = inputs, 0, 0
    while index < len(layers):
        layer = layers[index]
        following = layers[index + 1] if index + 1 < len(layers) else None
        if following is not None and _foldable(layer, following):
            x = _folded_conv(layer, following)(x)
            index, folds = index + 2, folds + 1
            continue
        x = layer(x)  # the same layer object: its weights are shared, not copied
        index += 1
    return keras.Model(inputs, x, name=model.name) if folds else None


def fold_batch_norm(model: Any, *, seed: int = 0) -> Any:
    """``model`` with each Conv2D -> BatchNormalization pair merged into one Conv2D, for inference.

    Returns ``model`` itself when there is nothing to fold, the model is not a plain chain, or
    the rebuilt model disagrees with it on random probe images.
    """
    try:
        rebuilt = _rebuilt_chain(model)
    except Exception as exc:  # noqa: BLE001 - a branched model cannot be replayed as a chain
        log.debug("not folding batch norm in %s: %s", model.name, exc)
        return model
    if rebuilt is None:
        return model
    shape = (PROBE_IMAGES, *tuple(model.inputs[0].shape[1:]))
    probe = np.random.default_rng(seed).random(shape, dtype=np.float32)
    expected = np.asarray(model(probe, training=False))
    got = np.asarray(rebuilt(probe, training=False))
    if expected.shape != got.shape or not np.allclose(expected, got, rtol=1e-4, atol=1e-5):
        log.warning("batch-norm folding changed %s's outputs; serving it unchanged", model.name)
        return model
    return rebuilt
