"""Training data: a pinned Delta snapshot of ``images`` -> labeled, decoded, split -> ``tf.data``.

* Labeled rows only. The label columns already hold the human label where one exists
  (ingest never lets a path label replace a human one), so "human wins" is the table's job.
* Rows with an ``error`` or bytes that do not decode are skipped and counted.
* The train / validation / test side of a row is a hash of its path (``infra.hashing``, as the
  sample data's holdout), so a row never changes side between runs or Delta versions.
* Decoding is :mod:`training.data.preprocess`, the one preprocessing the registered model ships.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from infra.errors import LakesightError
from infra.hashing import stable_fraction
from infra.lake import Lake, LakeError
from infra.settings import Settings
from infra.tables import IMAGES
from training.data.preprocess import decode_images

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
TEST_FRACTION = 0.15
VALIDATION_FRACTION = 0.15
MIN_IMAGE_SIZE = 32  # the keras.applications backbones refuse smaller inputs
MAX_IMAGE_SIZE = 224
_COLUMNS = ["path", "content", "content_hash", "label", "label_source", "error"]
LABELED_HASH = "labeled_content_hash"  # read where the snapshot has it
_DECODE_CHUNK = 512


class TrainingDataError(LakesightError, ValueError):
    """The snapshot cannot be trained on (no table, no labeled rows, a single class, …)."""


def split_of(
    path: str, *, test_fraction: float = TEST_FRACTION, validation_fraction: float = VALIDATION_FRACTION
) -> str:
    """``train``, ``validation`` or ``test`` for ``path``: a hash decides, so it never changes."""
    if stable_fraction(path) < test_fraction:  # the same hashing as the sample data's holdout
        return TEST
    # A second, independent hash splits the rest; its share is of what the test side left.
    share = validation_fraction / (1.0 - test_fraction)
    return VALIDATION if stable_fraction(f"validation:{path}") < share else TRAIN


def _native_size(data: bytes) -> int | None:
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            return max(image.size)
    except Exception:  # noqa: BLE001 - undecodable rows are counted when decoded
        return None


def infer_image_size(contents: Sequence[bytes], sample: int = 256) -> int:
    """The most common image side in the data, clamped to what the models accept."""
    sides = Counter(s for s in (_native_size(c) for c in contents[:sample]) if s)
    side = sides.most_common(1)[0][0] if sides else MIN_IMAGE_SIZE
    return int(min(MAX_IMAGE_SIZE, max(MIN_IMAGE_SIZE, side)))


@dataclass
class Snapshot:
    """Labeled, decodable rows of one Delta version of ``images``, with their split side."""

    table_uri: str
    delta_version: int
    image_size: int
    class_names: list[str]
    paths: list[str]
    contents: list[bytes]
    labels: list[str]
    splits: list[str]
    images: np.ndarray | None = None  # decoded, aligned with paths (None until decoded)
    skipped: Counter[str] = field(default_factory=Counter)
    unlabeled: int = 0

    @property
    def rows(self) -> int:
        return len(self.paths)

    def indices(self, split: str) -> np.ndarray:
        return np.asarray([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def label_ids(self, indices: np.ndarray | None = None) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.class_names)}
        chosen = range(self.rows) if indices is None else indices
        return np.asarray([lookup[self.labels[i]] for i in chosen], dtype=np.int32)

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(self.splits))

    def digest(self) -> str:
        """A short digest of what was trained on: paths, labels and content hashes."""
        h = hashlib.sha256()
        for path, label, content in sorted(zip(self.paths, self.labels, self.contents, strict=True)):
            h.update(f"{path}\0{label}\0{hashlib.sha256(content).hexdigest()}\n".encode())
        return h.hexdigest()[:16]

    def describe(self) -> Any:
        """One row per image (path, label, split): what MLflow records as the input dataset."""
        import pandas as pd

        return pd.DataFrame({"path": self.paths, "label": self.labels, "split": self.splits})

    def decoded(self, indices: np.ndarray) -> np.ndarray:
        assert self.images is not None, "decode() first"
        return self.images[indices]


def load_snapshot(
    settings: Settings,
    *,
    version: int | None = None,
    image_size: int | None = None,
    decode: bool = True,
    decode_only: Sequence[str] | None = None,
) -> Snapshot:
    """Labeled rows of ``images`` at ``version`` (latest when None), decoded and split.

    Raises :class:`TrainingDataError` when there is nothing to learn from (no labeled rows,
    a single class) so that no training starts. With ``decode_only`` (split names) only
    those rows are decoded, for workers that need part of the data.
    """
    lake = Lake(settings)
    try:
        pinned = lake.version(IMAGES) if version is None else int(version)
        present = {field.name for field in lake.table(IMAGES, pinned).schema().fields}
        table = lake.read(IMAGES, version=pinned, columns=[c for c in (*_COLUMNS, LABELED_HASH) if c in present])
    except LakeError as exc:
        raise TrainingDataError(f"no images table to train on ({exc}): ingest labeled images first") from exc
    except Exception as exc:  # delta-rs raises its own errors for a version that does not exist
        raise TrainingDataError(f"cannot read images at Delta version {version}: {exc}") from exc

    labeled = table.filter(pc.is_valid(table.column("label")))
    unlabeled = table.num_rows - labeled.num_rows
    skipped: Counter[str] = Counter()
    labeled = _labels_for_these_bytes(labeled, skipped)
    errors = labeled.column("error").to_pylist()
    for reason in errors:
        if reason is not None:
            skipped["error in table"] += 1
    good = labeled.filter(pc.is_null(labeled.column("error")))
    paths = good.column("path").to_pylist()
    contents = good.column("content").to_pylist()
    labels = good.column("label").to_pylist()
    # Empty bytes never decode: count them now rather than after a decode.
    keep = [i for i, c in enumerate(contents) if c]
    if len(keep) < len(contents):
        skipped["empty content"] += len(contents) - len(keep)
    paths, contents, labels = [paths[i] for i in keep], [contents[i] for i in keep], [labels[i] for i in keep]

    _check_learnable(labels, table.num_rows, pinned)
    size = image_size or infer_image_size(contents)
    snapshot = Snapshot(
        table_uri=settings.table_uri(IMAGES),
        delta_version=pinned,
        image_size=size,
        class_names=sorted(set(labels)),
        paths=paths,
        contents=contents,
        labels=labels,
        splits=[split_of(p) for p in paths],
        skipped=skipped,
        unlabeled=unlabeled,
    )
    if decode:
        _decode(snapshot, settings.max_image_bytes, decode_only)
    skipped_total = sum(snapshot.skipped.values())
    if skipped_total:
        log.warning("skipped %d labeled rows of images@%d: %s", skipped_total, pinned, dict(snapshot.skipped))
    return snapshot


def _labels_for_these_bytes(labeled: pa.Table, skipped: Counter[str]) -> pa.Table:
    """The labeled rows whose label was given for the bytes the row holds (docs/LABELING.md).

    A human label records the content hash it was given for; one that differs from the row's
    (bytes replaced after the label, before a stream cleared it) never trains the model.
    """
    if LABELED_HASH not in labeled.column_names:
        return labeled  # a snapshot from before labels recorded their bytes
    given, held = labeled.column(LABELED_HASH), labeled.column("content_hash")
    stale = pc.fill_null(pc.and_(pc.and_(pc.is_valid(given), pc.is_valid(held)), pc.not_equal(given, held)), False)
    count = int(pc.sum(stale).as_py() or 0)
    if count:
        skipped["label for other bytes"] += count
    return labeled.filter(pc.invert(stale))


def _check_learnable(labels: list[str], rows: int, version: int) -> None:
    if not labels:
        raise TrainingDataError(
            f"images@{version} has no usable labeled rows ({rows} rows in all): "
            "ingest with --labeled or import human labels first"
        )
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TrainingDataError(
            f"images@{version} has labels of a single class ({classes[0]!r}, {len(labels)} rows): "
            "a classifier needs at least two classes"
        )


def _decode(snapshot: Snapshot, max_bytes: int, only: Sequence[str] | None) -> None:
    """Decode rows (all, or those of the ``only`` splits); drop and count the undecodable."""
    wanted = [i for i, s in enumerate(snapshot.splits) if only is None or s in only]
    images = np.zeros((len(wanted), snapshot.image_size, snapshot.image_size, 3), dtype=np.float32)
    bad: set[int] = set()
    for start in range(0, len(wanted), _DECODE_CHUNK):
        chunk = wanted[start : start + _DECODE_CHUNK]
        batch, errors = decode_images([snapshot.contents[i] for i in chunk], snapshot.image_size, max_bytes=max_bytes)
        images[start : start + len(chunk)] = batch
        for offset, reason in enumerate(errors):
            if reason is not None:
                bad.add(start + offset)
                snapshot.skipped["undecodable" if "undecodable" in reason else reason.split(":")[0]] += 1
    keep = [k for k in range(len(wanted)) if k not in bad]
    rows = [wanted[k] for k in keep]
    snapshot.paths = [snapshot.paths[i] for i in rows]
    snapshot.contents = [snapshot.contents[i] for i in rows]
    snapshot.labels = [snapshot.labels[i] for i in rows]
    snapshot.splits = [snapshot.splits[i] for i in rows]
    snapshot.images = images[keep]
    if only is None:
        _check_learnable(snapshot.labels, snapshot.rows, snapshot.delta_version)


# tf.data ---------------------------------------------------------------------------------------
class TrainFeed(Protocol):
    """Where a training run's rows come from: ``rows`` (all workers together) of ``image_size``
    images, and the ``tf.data`` dataset of one worker's shard, in its per-replica batch size."""

    @property
    def rows(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    def dataset(self, context: Any, *, batch_size: int, seed: int) -> Any: ...


@dataclass
class ArrayFeed:
    """The default feed: decoded rows of a Delta snapshot (read through Arrow), in memory."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def dataset(self, context: Any, *, batch_size: int, seed: int) -> Any:
        return make_dataset(
            self.images,
            self.labels,
            batch_size=batch_size,
            training=True,
            seed=seed + context.input_pipeline_id,
            shard=(context.input_pipeline_id, context.num_input_pipelines),
        )


def augment(image: Any, seed: Any = None) -> Any:
    """Light augmentation for training only: shift by up to 1/16 of the side, jitter brightness."""
    import tensorflow as tf

    size = image.shape[0]
    pad = max(1, size // 16)
    padded = tf.image.resize_with_crop_or_pad(image, size + 2 * pad, size + 2 * pad)
    shifted = tf.image.random_crop(padded, [size, size, 3])
    brighter = tf.image.random_brightness(shifted, 0.1)
    return tf.clip_by_value(brighter, 0.0, 1.0)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
) -> Any:
    """A batched, prefetched ``tf.data.Dataset``; shuffled, augmented and repeated when ``training``.

    ``shard=(index, count)`` keeps every ``count``-th row from ``index`` (one worker's share).
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shard is not None and shard[1] > 1:
        dataset = dataset.shard(shard[1], shard[0])
    if training:
        dataset = dataset.shuffle(max(1, len(labels)), seed=seed, reshuffle_each_iteration=True).repeat()
        dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=False)
    options = tf.data.Options()
    # Sharding is done above, by row; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def training_batches(rows: Any, *, image_size: int, max_bytes: int, batch_size: int, seed: int) -> Any:
    """Training batches from a ``tf.data`` stream of ``(content, label_id)`` row batches (a feed that
    reads rows rather than holding them, e.g. Petastorm's): decoded with the model's one
    preprocessing, shuffled within a buffer, augmented and batched as :func:`make_dataset` does."""
    import tensorflow as tf

    def decode(contents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, errors = decode_images(list(contents), image_size, max_bytes=max_bytes)
        return images, np.asarray([e is None for e in errors])

    def decoded(content: Any, label: Any) -> Any:
        images, ok = tf.numpy_function(decode, [content], (tf.float32, tf.bool), stateful=False)
        images = tf.ensure_shape(images, [None, image_size, image_size, 3])
        return tf.data.Dataset.from_tensor_slices((images, tf.cast(label, tf.int32), ok))

    dataset = rows.flat_map(decoded).filter(lambda _x, _y, ok: ok).map(lambda x, y, _ok: (x, y))
    dataset = dataset.shuffle(4 * max(batch_size, 64), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
