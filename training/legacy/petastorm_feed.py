"""Petastorm's Spark converter as a training feed (``--feed petastorm``, the legacy stack).

On the driver, :func:`convert_snapshot` reads the data files of the pinned Delta version with
Spark (the files delta-rs lists for that version, so no other version's rows can enter), keeps the
rows the snapshot chose for each split (the same hash split, labels and decodable rows as the
default feed) and hands them to ``make_spark_converter``, which materialises them as Parquet
under ``petastorm_cache_url``. The converters are small picklable handles: each training process
opens its shard (``cur_shard`` = its rank) as a ``tf.data`` dataset of row batches and decodes them
with the model's one preprocessing (``training.data.feed.training_batches``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.errors import SettingsError
from infra.lake import Lake
from infra.locations import names_driver_storage
from infra.settings import Settings
from infra.spark import get_spark
from infra.tables import IMAGES
from training.data.feed import TRAIN, VALIDATION, Snapshot, training_batches
from training.data.preprocess import decode_images

log = logging.getLogger(__name__)

CACHE_DIR_CONF = "petastorm.spark.converter.parentCacheDirUrl"
READ_BATCH = 64  # rows per Petastorm read; decoding and batching for the model happen after
# Small row groups: Petastorm shards by row group, and every rank needs some of them.
ROW_GROUP_BYTES = 1024 * 1024
FILES_PER_WORKER = 4


@dataclass
class PetastormSource:
    """What the training processes get (pickled into their jobs): the converters and their shapes."""

    train: Any  # petastorm.spark.SparkDatasetConverter
    validation: Any | None
    train_rows: int
    image_size: int
    max_bytes: int
    seed: int = 0

    def delete(self) -> None:
        """Remove the materialised Parquet (the run is over, or failed)."""
        for converter in (self.train, self.validation):
            if converter is not None:
                with contextlib.suppress(Exception):
                    converter.delete()


def convert_snapshot(settings: Settings, snapshot: Snapshot, *, workers: int, seed: int = 0) -> PetastormSource:
    """Materialise the snapshot's train and validation rows through Petastorm's Spark converter."""
    from petastorm.spark import make_spark_converter

    spark = get_spark(settings, "lakesight-train")
    master = str(spark.sparkContext.master)
    local_cache = names_driver_storage(settings.petastorm_cache_url) and not settings.allow_local_paths_on_cluster
    if local_cache and not master.startswith("local"):
        raise SettingsError(
            f"petastorm_cache_url={settings.petastorm_cache_url} is on this machine, which the workers of "
            f"{master} cannot read: set LAKESIGHT_PETASTORM_CACHE_URL to shared storage (dbfs:/, abfss://)"
        )
    spark.conf.set(CACHE_DIR_CONF, settings.petastorm_cache_url)
    files = Lake(settings).table(IMAGES, version=snapshot.delta_version).file_uris()
    rows = spark.read.parquet(*files).select("path", "content")
    lookup = {name: i for i, name in enumerate(snapshot.class_names)}

    def split_rows(split: str) -> Any:
        chosen = [(snapshot.paths[i], lookup[snapshot.labels[i]]) for i in snapshot.indices(split)]
        if not chosen:
            return None
        keys = spark.createDataFrame(chosen, "path string, label_id int")
        frame = rows.join(keys, "path").select("content", "label_id")
        return frame.repartition(max(2, workers * FILES_PER_WORKER))

    train_rows = split_rows(TRAIN)
    if train_rows is None:
        raise ValueError(f"images@{snapshot.delta_version} has no rows on the train side of the split")
    train = make_spark_converter(train_rows, parquet_row_group_size_bytes=ROW_GROUP_BYTES)
    validation_rows = split_rows(VALIDATION)
    validation = (
        None
        if validation_rows is None
        else make_spark_converter(validation_rows, parquet_row_group_size_bytes=ROW_GROUP_BYTES)
    )
    log.info(
        "petastorm: %d train and %d validation rows of images@%d materialised under %s",
        len(train),
        len(validation) if validation is not None else 0,
        snapshot.delta_version,
        settings.petastorm_cache_url,
    )
    return PetastormSource(
        train=train,
        validation=validation,
        train_rows=len(train),
        image_size=snapshot.image_size,
        max_bytes=settings.max_image_bytes,
        seed=seed,
    )


@dataclass
class PetastormFeed:
    """One training process's shard of the train converter, as ``training.run.loop.fit`` reads feeds."""

    source: PetastormSource
    stack: contextlib.ExitStack

    @property
    def rows(self) -> int:
        return self.source.train_rows

    @property
    def image_size(self) -> int:
        return self.source.image_size

    def dataset(self, context: Any, *, batch_size: int, seed: int) -> Any:
        shards = context.num_input_pipelines
        reader = self.source.train.make_tf_dataset(
            batch_size=READ_BATCH,
            num_epochs=None,  # repeated: the loop's step count ends an epoch
            workers_count=1,
            cur_shard=context.input_pipeline_id if shards > 1 else None,
            shard_count=shards if shards > 1 else None,
            seed=seed + context.input_pipeline_id,
        )
        rows = self.stack.enter_context(reader).map(lambda batch: (batch.content, batch.label_id))
        return training_batches(
            rows,
            image_size=self.source.image_size,
            max_bytes=self.source.max_bytes,
            batch_size=batch_size,
            seed=seed + context.input_pipeline_id,
        )


def read_validation(source: PetastormSource) -> tuple[np.ndarray, np.ndarray]:
    """The validation rows, whole and decoded (the chief evaluates on them and keeps the reference)."""
    size = source.image_size
    if source.validation is None:
        return np.zeros((0, size, size, 3), np.float32), np.zeros((0,), np.int32)
    contents: list[bytes] = []
    labels: list[int] = []
    with source.validation.make_tf_dataset(batch_size=256, num_epochs=1, workers_count=1) as batches:
        for batch in batches:
            contents.extend(bytes(c) for c in batch.content.numpy())
            labels.extend(int(v) for v in batch.label_id.numpy())
    images, errors = decode_images(contents, size, max_bytes=source.max_bytes)
    keep = [i for i, e in enumerate(errors) if e is None]
    return images[keep], np.asarray([labels[i] for i in keep], dtype=np.int32)


@contextlib.contextmanager
def open_feed(source: PetastormSource, *, chief: bool) -> Iterator[tuple[PetastormFeed, Any]]:
    """This process's train feed (its readers close on exit) and, for the chief, the validation rows."""
    with contextlib.ExitStack() as stack:
        validation = read_validation(source) if chief else None
        yield PetastormFeed(source, stack), validation
