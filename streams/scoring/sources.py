"""The scoring stream's two sources, both ending as file rows (path, modificationTime, length, content).

* a directory: Spark's ``binaryFile`` file stream (or Databricks Auto Loader, ``cloudFiles``);
  from a local folder Spark only lists, and executors read each file (``streams.file_rows``);
* arrival records (``infra.arrivals``): a JSON file stream whose rows name blobs; executors
  download each blob's bytes (``streams.scoring.fetch``).

This module is the driver side: which source, its reader options, its checkpoint name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.arrivals import ARRIVAL_RECORD_DDL, arrivals_location, record_file_bytes
from infra.errors import LakesightError
from infra.filesystem import files_for
from infra.images import IMAGE_GLOB
from infra.locations import local_path
from infra.settings import Settings
from streams.checkpoint.names import checkpoint_name
from streams.file_rows import image_file_stream
from streams.scoring.executor import executor_mapper
from streams.scoring.fetch import FETCHED_DDL, fetch_blobs
from streams.watched_folder import typical_file_bytes


class SourceError(LakesightError, ValueError):
    """The stream cannot start on this source (missing folder, bad option)."""


@dataclass(frozen=True)
class Source:
    """What to score: a folder of image files, or the arrival records folder."""

    kind: str  # "directory" or "arrivals"
    location: str
    glob: str = IMAGE_GLOB

    @property
    def checkpoint(self) -> str:
        return checkpoint_name(f"score-{self.kind}", self.location)

    @property
    def reads_files(self) -> bool:
        """True when Spark's own file source lists the images (its log names the batch's files)."""
        return self.kind == "directory"


def directory_source(path: str | Path, *, glob: str = IMAGE_GLOB) -> Source:
    location = str(path)
    if "://" not in location:
        folder = Path(location).expanduser()
        if not folder.is_dir():
            raise SourceError(f"source {location} is not an existing folder")
        location = str(folder.resolve())
    return Source("directory", location, glob)


def _overlap(first: str, second: str) -> bool:
    """Whether two local folders are the same or one holds the other (cloud paths: not checked)."""
    a, b = local_path(first), local_path(second)
    if a is None or b is None:
        return False
    a, b = a.absolute(), b.absolute()
    return a == b or a in b.parents or b in a.parents


def clean_source_options(settings: Settings, source: Source) -> dict[str, str]:
    """Reader options that archive or delete a source's files (images, or arrival records) once
    their batch has committed.

    The rows are in Delta by then (image bytes included), and a folder that only ever grows makes
    every trigger's listing slower. The archive must lie outside the watched folder, or the
    archived files would be listed, and scored, again.
    """
    mode = settings.score_clean_source
    if mode == "off":
        return {}
    archive = settings.score_archive_dir
    if mode == "archive" and _overlap(source.location, archive):
        raise SourceError(f"score_archive_dir {archive} must lie outside the watched folder {source.location}")
    if settings.score_source_format == "cloudFiles" and source.kind == "directory":
        options = {"cloudFiles.cleanSource": "MOVE" if mode == "archive" else "DELETE"}
        if mode == "archive":
            options["cloudFiles.cleanSource.moveDestination"] = archive
        return options
    return {"cleanSource": mode, **({"sourceArchiveDir": archive} if mode == "archive" else {})}


def arrivals_source(settings: Settings) -> Source:
    """The arrival records folder: local (created here), or on cloud storage as the settings name it."""
    location = arrivals_location(settings)
    folder = local_path(location)
    if folder is None:
        return Source("arrivals", location)
    folder.mkdir(parents=True, exist_ok=True)
    return Source("arrivals", str(folder.resolve()))


def typical_record_file_bytes(location: str, *, sample: int = 1000) -> int | None:
    """The 90th percentile of the image bytes announced by up to ``sample`` record files in
    ``location`` (from their names, ``infra.arrivals.record_file_bytes``); None if none says."""
    sizes: list[int] = []
    for name in files_for(location).names(location):
        size = record_file_bytes(name)
        if size:
            sizes.append(size)
            if len(sizes) >= sample:
                break
    return int(np.percentile(sizes, 90)) if sizes else None


def file_rows(spark: Any, settings: Settings, source: Source) -> Any:
    """A streaming DataFrame of file rows for ``source``: ``FETCHED_DDL`` for arrival records; a folder's
    are ``BINARY_FILE_DDL``'s, without ``content`` when the folder is local (``image_file_stream``)."""
    if source.kind == "arrivals":
        # The image bytes a batch downloads are collected on the driver: the budget bounds them
        # as it does a folder's (docs/STREAMING.md, How a micro-batch flows).
        limit = file_count_limit(settings, typical_record_file_bytes(source.location))
        records = (
            spark.readStream.format("json")
            .schema(ARRIVAL_RECORD_DDL)
            .option("maxFilesPerTrigger", limit)
            .option("pathGlobFilter", "*.jsonl")
            .options(**clean_source_options(settings, source))
            .load(source.location)
        )
        # Few records per file: repartition so every core downloads and scores.
        parallelism = spark.sparkContext.defaultParallelism
        return records.repartition(parallelism).mapInPandas(executor_mapper(fetch_blobs, settings), FETCHED_DDL)
    reader = _folder_reader(spark, settings, source).options(**clean_source_options(settings, source))
    files = image_file_stream(reader, source.location, source.glob)
    # Without this each file became its own task (docs/PLATFORM.md: 97 -> 194 img/s).
    return files.coalesce(spark.sparkContext.defaultParallelism)


def folder_limits(settings: Settings, typical_file_bytes: int | None = None) -> dict[str, str]:
    """The folder source's batch limits: files always, image bytes too.

    A byte budget alone keeps batches large for small images (the fixed cost of a micro-batch is
    about a second here) and small for large ones (the batch is collected on the driver), but a
    backlog of small files became one batch of 19,500 files (~47 s) that a crash-looping stream
    never finished: the file cap bounds every batch. Auto Loader honours both (the lower wins).
    Spark's own file source refuses the two together, so there the byte budget becomes a file
    count: the budget over the folder's typical file size (``typical_file_bytes``, its 90th
    percentile when the query starts), never above the file cap. A folder of 4 MB photos then
    gets batches of 16 files, not 2,000 (8 GB on the driver).
    """
    files = settings.score_max_files_per_trigger
    by_bytes = settings.score_max_bytes_per_trigger
    if settings.score_source_format != "cloudFiles":
        return {"maxFilesPerTrigger": str(file_count_limit(settings, typical_file_bytes))}
    limits = {"cloudFiles.maxFilesPerTrigger": str(files)}
    if by_bytes:
        limits["cloudFiles.maxBytesPerTrigger"] = str(by_bytes)
    return limits


def file_count_limit(settings: Settings, typical_file_bytes: int | None) -> int:
    """Files per micro-batch for Spark's file source: the file cap, or fewer when the byte budget
    over the typical file's bytes (images, or the image bytes of a record file) is lower."""
    files = settings.score_max_files_per_trigger
    by_bytes = settings.score_max_bytes_per_trigger
    if by_bytes and typical_file_bytes:
        files = max(1, min(files, by_bytes // typical_file_bytes))
    return files


def _folder_reader(spark: Any, settings: Settings, source: Source) -> Any:
    if settings.score_source_format == "cloudFiles":
        reader = spark.readStream.format("cloudFiles").option("cloudFiles.format", "binaryFile")
        return reader.options(**folder_limits(settings))
    typical = typical_file_bytes(source.location, source.glob)
    return spark.readStream.format("binaryFile").options(**folder_limits(settings, typical))
