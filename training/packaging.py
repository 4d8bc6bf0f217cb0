"""The registered model: a Keras network plus the one preprocessing, taking raw image bytes.

``ImageClassifier`` is an MLflow pyfunc. ``predict`` takes a DataFrame with a ``content``
column of bytes and returns ``label``, ``confidence``, ``probabilities``, ``embedding`` and
``error``. ``classify`` is the same without pandas plumbing, for the scoring stream's hot path.

The embedding is the network's penultimate layer (the input of its ``probabilities`` layer),
L2-normalised float32 of at most :data:`EMBEDDING_MAX_DIMS` values: what the labeling strategies
measure diversity and near-duplicates with (docs/LABELING.md), and what ``lakesight featurize``
writes for any classifier. A network without that layer still classifies; its embedding is null.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from infra.errors import LakesightError
from infra.registry import REFERENCE_ARTIFACT, REFERENCE_FILE, Baseline
from training.data.preprocess import decode_images
from training.model.fold_batchnorm import fold_batch_norm
from training.run.tf_runtime import enable_gpu_memory_growth, limit_tensorflow_threads

OUTPUT_COLUMNS = ["label", "confidence", "probabilities", "embedding", "error"]
EMBEDDING_MAX_DIMS = 128
EMBEDDING_LAYER = "probabilities"  # the embedding is this layer's input
REFERENCE_IMAGES = 512  # held-out images kept as the model's reference (a few hundred KB)
_PROJECTION_SEED = 20261201  # fixed: a wider penultimate layer always projects the same way


def padded_rows(rows: int, step: int) -> int:
    """How many rows a batch of ``rows`` is padded to: a power of two below ``step``, else a multiple of it.

    A bounded set of shapes either way; small batches (the model server answers single images)
    are not padded to ``step``, which made one image cost as much as 32.
    """
    if rows >= step:
        return -(-rows // step) * step
    return 1 << max(rows - 1, 0).bit_length()


def _pad_rows(batch: np.ndarray, step: int) -> np.ndarray:
    """``batch`` with zero rows appended up to :func:`padded_rows` (inference is per row)."""
    extra = padded_rows(len(batch), step) - len(batch)
    if not extra:
        return batch
    return np.concatenate([batch, np.zeros((extra, *batch.shape[1:]), dtype=batch.dtype)])


class ImageClassifier(PythonModel):
    """Raw bytes in, label / confidence / per-class probabilities out."""

    batch_size = 256
    # TensorFlow (oneDNN) builds and caches kernels per input shape, and a stream's batches come
    # in every size: a worker grew ~150 MB over 300 odd-sized calls and kept creeping. Batches
    # padded to a multiple of ``shape_step`` keep to 8 shapes (measured: +67 MB, then flat);
    # smaller ones to a power of two, 5 shapes more (``padded_rows``).
    shape_step = 32
    embedding_dims: int | None = None  # the embedding's width; None for a network without one

    def load_context(self, context: Any) -> None:
        reference = context.artifacts.get(REFERENCE_ARTIFACT)
        network = next(context.artifacts[key] for key in NETWORK_ARTIFACTS if key in context.artifacts)
        self.load(Path(network), Path(context.artifacts["config"]), reference=Path(reference) if reference else None)

    def load(self, model_path: Path, config_path: Path, *, reference: Path | None = None) -> None:
        limit_tensorflow_threads()
        enable_gpu_memory_growth()
        import tensorflow as tf

        config = json.loads(config_path.read_text())
        self.class_names: list[str] = list(config["class_names"])
        self.image_size: int = int(config["image_size"])
        self.max_bytes: int = int(config.get("max_bytes", 64 * 1024 * 1024))
        network = load_network(model_path, config)
        self.reference = Baseline.load(reference) if reference is not None else None
        features, head = split_at_embedding(network)
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
        # Served with batch norm folded into the convolutions: the same outputs, fewer passes.
        if features is None or head is None:
            self.keras_model = fold_batch_norm(network)
            self.embedding_dims = None
            # A fixed input signature: one trace for every batch size (predict_on_batch retraced).
            self._infer = tf.function(lambda x: (self.keras_model(x, training=False), None), input_signature=[spec])
            return
        self.keras_model = fold_batch_norm(features)
        width = int(features.outputs[0].shape[-1])
        self._projection = _projection(width)
        self.embedding_dims = width if self._projection is None else EMBEDDING_MAX_DIMS
        # The reference images' mean feature, taken off before normalising: ReLU features all
        # point into one orthant, and uncentred their cosine distances crowd near zero.
        center = config.get("embedding_center")
        offset = tf.constant(center if center is not None else [0.0] * self.embedding_dims, tf.float32)

        def infer(x: Any) -> Any:
            penultimate = self.keras_model(x, training=False)
            return head(penultimate), tf.math.l2_normalize(self._project(penultimate) - offset, axis=1)

        self._infer = tf.function(infer, input_signature=[spec])

    def _project(self, penultimate: Any) -> Any:
        import tensorflow as tf

        return penultimate if self._projection is None else tf.matmul(penultimate, self._projection)

    def raw_features(self, images: np.ndarray) -> np.ndarray:
        """The penultimate layer (projected, neither centred nor normalised) of decoded images."""
        if self.embedding_dims is None:
            raise ValueError("this network has no embedding layer")
        chunks = [
            np.asarray(self._project(self.keras_model(images[start : start + self.batch_size], training=False)))
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_dims), np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for already decoded images (for raw-model benchmarks)."""
        return self.forward(images)[0]

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and embeddings (None without an embedding layer) of decoded images."""
        probs, vectors = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            p, v = self._infer(_pad_rows(chunk, self.shape_step))
            probs.append(np.asarray(p, dtype=np.float32)[: len(chunk)])
            if v is not None:
                vectors.append(np.asarray(v, dtype=np.float32)[: len(chunk)])
        if not probs:
            empty = np.zeros((0, self.embedding_dims), np.float32) if self.embedding_dims else None
            return np.zeros((0, len(self.class_names)), np.float32), empty
        return np.concatenate(probs), (np.concatenate(vectors) if vectors else None)

    def decode(self, contents: Sequence[bytes | None]) -> tuple[np.ndarray, list[str | None]]:
        """The model's own preprocessing: images as its input array, and why each row failed (or None)."""
        return decode_images(contents, self.image_size, max_bytes=self.max_bytes)

    def classify(self, contents: Sequence[bytes | None]) -> pd.DataFrame:
        images, errors = self.decode(contents)
        good = [i for i, e in enumerate(errors) if e is None]
        probs, vectors = self.forward(images[good]) if good else self.forward(images[:0])
        labels: list[str | None] = [None] * len(contents)
        confidence: list[float | None] = [None] * len(contents)
        per_class: list[list[float] | None] = [None] * len(contents)
        embedding: list[np.ndarray | None] = [None] * len(contents)
        for position, (row, p) in enumerate(zip(good, probs, strict=True)):
            best = int(np.argmax(p))
            labels[row] = self.class_names[best]
            confidence[row] = float(p[best])
            per_class[row] = [float(v) for v in p]
            if vectors is not None:
                embedding[row] = vectors[position]
        return pd.DataFrame(
            {
                "label": labels,
                "confidence": confidence,
                "probabilities": per_class,
                "embedding": embedding,
                "error": errors,
            },
            columns=OUTPUT_COLUMNS,
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if "content" not in model_input.columns:
            raise ValueError("model input needs a 'content' column of image bytes")
        result = self.classify(list(model_input["content"]))
        # Plain lists: MLflow's JSON answer (its model server) cannot carry numpy arrays.
        result["embedding"] = [None if v is None else v.tolist() for v in result["embedding"]]
        return result


# The network travels as a Keras 3 ``.keras`` file (the default stack), or as its layers' weights
# plus the build_model arguments (the legacy stack's Keras 2 writes a ``.keras`` Keras 3 cannot read:
# docs/LEGACY.md, "One model contract"). Either loads on both stacks.
KERAS_FILE, LAYER_WEIGHTS = "keras_model", "layer_weights"
NETWORK_ARTIFACTS = (KERAS_FILE, LAYER_WEIGHTS)


class PackagingError(LakesightError, ValueError):
    """A network that cannot be saved or rebuilt in the model contract's formats."""


def keras_major() -> int:
    import keras

    return int(keras.__version__.split(".")[0])


def save_network(model: Any, folder: Path, architecture: dict[str, Any] | None) -> tuple[str, Path, dict[str, Any]]:
    """Write ``model`` for the registry: ``(artifact name, file, what the config must add)``."""
    if keras_major() >= 3:
        path = folder / "model.keras"
        model.save(path)
        return KERAS_FILE, path, {}
    if architecture is None:
        raise PackagingError("Keras 2 saves a network as its layer weights: pass the build_model architecture")
    return save_layer_weights(model, folder, architecture)


def save_layer_weights(model: Any, folder: Path, architecture: dict[str, Any]) -> tuple[str, Path, dict[str, Any]]:
    """``model``'s weights by layer name plus ``build_model``'s arguments: what :func:`load_network`
    rebuilds in either Keras."""
    path = folder / "weights.npz"
    arrays = {f"{layer.name}/{i}": np.asarray(w) for layer in model.layers for i, w in enumerate(layer.get_weights())}
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return LAYER_WEIGHTS, path, {"network": {"format": LAYER_WEIGHTS, "architecture": dict(architecture)}}


def load_network(path: Path, config: dict[str, Any]) -> Any:
    """The network a model version carries, in this process's Keras (2 or 3)."""
    import keras

    spec = config.get("network")
    if spec is None:
        return keras.saving.load_model(path, compile=False)
    if spec.get("format") != LAYER_WEIGHTS:
        raise PackagingError(f"unknown network format {spec.get('format')!r} in the model's config")
    from training.model.models import build_model

    network = build_model(**spec["architecture"])
    with np.load(path) as arrays:
        set_layer_weights(network, dict(arrays))
    return network


def set_layer_weights(network: Any, arrays: dict[str, np.ndarray]) -> None:
    """Load ``{layer name/index: array}`` into ``network``, refusing any missing, extra or misshapen one."""
    used = set()
    for layer in network.layers:
        expected = layer.get_weights()
        if not expected:
            continue
        keys = [f"{layer.name}/{i}" for i in range(len(expected))]
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise PackagingError(f"the saved network has no weights for {', '.join(missing)}")
        values = [arrays[k] for k in keys]
        for key, value, want in zip(keys, values, expected, strict=True):
            if value.shape != want.shape:
                raise PackagingError(f"weights {key} have shape {value.shape}; the network expects {want.shape}")
        layer.set_weights(values)
        used.update(keys)
    extra = sorted(set(arrays) - used)
    if extra:
        raise PackagingError(f"the saved network has weights no layer takes: {', '.join(extra[:5])}")


def split_at_embedding(network: Any) -> tuple[Any | None, Any | None]:
    """``(features, head)``: the network up to its embedding and the layer after it.

    ``(None, None)`` when the network has no single-input Dense ``probabilities`` output layer
    (a network made elsewhere): it then serves without embeddings.
    """
    import keras

    try:
        head = network.get_layer(EMBEDDING_LAYER)
    except ValueError:
        return None, None
    if not isinstance(head, keras.layers.Dense) or len(network.outputs) != 1 or network.outputs[0] is not head.output:
        return None, None
    # ``network.input``, not ``.inputs``: a one-element list as the inputs made every call with an
    # array warn "The structure of `inputs` doesn't match the expected structure" on the console.
    return keras.Model(network.input, head.input, name=f"{network.name}_features"), head


def _projection(width: int) -> Any | None:
    """A fixed random projection down to :data:`EMBEDDING_MAX_DIMS`, or None when ``width`` fits.

    Gaussian, scaled by 1/sqrt(k): cosine distances survive it approximately (Johnson-Lindenstrauss).
    """
    if width <= EMBEDDING_MAX_DIMS:
        return None
    rng = np.random.default_rng(_PROJECTION_SEED)
    matrix = rng.normal(0.0, 1.0 / np.sqrt(EMBEDDING_MAX_DIMS), (width, EMBEDDING_MAX_DIMS))
    return matrix.astype(np.float32)


def model_signature() -> Any:
    """Bytes in; label, confidence, probabilities, embedding and error out (all null for unreadable rows)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "content")]),
        outputs=Schema(
            [
                ColSpec("string", "label", required=False),
                ColSpec("double", "confidence", required=False),
                ColSpec(Array("double"), "probabilities", required=False),
                ColSpec(Array("float"), "embedding", required=False),
                ColSpec("string", "error", required=False),
            ]
        ),
    )


def log_classifier(
    keras_model: Any,
    *,
    class_names: Sequence[str],
    image_size: int,
    input_example: bytes,
    registered_model_name: str | None = None,
    name: str = "model",
    reference_images: np.ndarray | None = None,
    architecture: dict[str, Any] | None = None,
) -> Any:
    """Log ``keras_model`` wrapped as an :class:`ImageClassifier` to the active run.

    ``architecture`` (``build_model``'s arguments) lets Keras 2 save the network in the format
    both stacks load (:func:`save_network`). ``reference_images`` (decoded held-out images; at
    most :data:`REFERENCE_IMAGES` are used) centre the embeddings and become the model's reference
    (``infra.core.drift.Baseline``).
    Returns MLflow's ModelInfo (with ``registered_model_version`` when registered).
    """
    with tempfile.TemporaryDirectory() as folder:
        config_path = Path(folder) / "config.json"
        network, model_path, network_config = save_network(keras_model, Path(folder), architecture)
        config: dict[str, Any] = {"class_names": list(class_names), "image_size": image_size, **network_config}
        config_path.write_text(json.dumps(config))
        probe = ImageClassifier()
        probe.load(model_path, config_path)
        artifacts = {network: str(model_path), "config": str(config_path)}
        if reference_images is not None and len(reference_images):
            sample = np.asarray(reference_images[:REFERENCE_IMAGES], dtype=np.float32)
            if probe.embedding_dims is not None:
                config["embedding_center"] = [float(v) for v in probe.raw_features(sample).mean(axis=0)]
                config_path.write_text(json.dumps(config))
                probe.load(model_path, config_path)
            probabilities, embeddings = probe.forward(sample)
            reference_path = Path(folder) / REFERENCE_FILE
            Baseline(probabilities, list(class_names), embeddings).save(reference_path)
            artifacts[REFERENCE_ARTIFACT] = str(reference_path)
        example = pd.DataFrame({"content": [input_example]})
        probe.predict(None, example)  # fail here, not at serving time
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=ImageClassifier(),
            artifacts=artifacts,
            signature=model_signature(),
            input_example=example,
            registered_model_name=registered_model_name,
        )
