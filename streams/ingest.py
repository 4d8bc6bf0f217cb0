"""Batch ingest: an ``availableNow`` Structured Streaming pass over image files into ``images``.

Like Auto Loader's "trigger once": the checkpoint remembers which files were seen, so a
second run ingests only new files.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infra.errors import LakesightError
from infra.image_bytes import BYTES_REPLACED, keep_stored_rows
from infra.images import IMAGE_GLOB
from infra.lake import Lake, Transaction, from_source, open_lake
from infra.settings import Settings
from infra.spark import get_spark
from infra.tables import ARRIVAL_COLUMNS, IMAGES, LABEL_COLUMNS, LABEL_SOURCE_HUMAN, column_names
from streams.batch_writer import BatchSteps, BatchTotals, Committed, ExactlyOnceWriter, Unstaged
from streams.checkpoint.names import checkpoint_name
from streams.file_rows import ARRIVAL_CHANGED, ARRIVAL_DDL, FileChecks, arrival_rows, image_file_stream, label_folder
from streams.watched_folder import WatchedFolder


class IngestError(LakesightError, ValueError):
    """The ingest cannot start (missing source, bad options)."""


@dataclass(kw_only=True)
class IngestReport(BatchTotals):
    source: str
    files: int = 0
    skipped_files: int = 0  # in the folder, left out by the glob (each logged once)
    reread_files: int = 0  # had an error row, changed since, read again
    unknown_labels: Counter[str] = field(default_factory=Counter)

    def count(self, batch: Committed, *, labeled: bool) -> None:
        """Count one MERGEd batch, and the readable files of a labeled one that got no label."""
        super().add(batch)
        self.files += batch.table.num_rows
        if labeled:
            table = batch.table
            readable = pc.and_(pc.is_null(table.column("label")), pc.is_null(table.column("error")))
            unlabeled = pc.filter(table.column("path"), readable).to_pylist()
            self.unknown_labels.update(label_folder(p) or "(no folder)" for p in unlabeled)


# Arrival columns change only when the file did; a path label never replaces a human one.
_UPDATE_ARRIVAL = from_source(c for c in column_names(ARRIVAL_COLUMNS) if c not in ("path", "load_date"))
# A human label stays, unless the bytes it was given for are replaced (infra.image_bytes).
_UPDATE_LABEL = {
    name: (
        f"CASE WHEN {BYTES_REPLACED} AND t.label_source = '{LABEL_SOURCE_HUMAN}' THEN s.{name} "
        f"WHEN t.label_source = '{LABEL_SOURCE_HUMAN}' OR s.label IS NULL THEN t.{name} ELSE s.{name} END"
    )
    for name in column_names(LABEL_COLUMNS)
}
# delta-rs's SQL parser needs each IS DISTINCT FROM in its own parentheses.
_UPDATE_WHEN = (
    f"{ARRIVAL_CHANGED} "
    f"OR (s.label IS NOT NULL AND (t.label_source IS DISTINCT FROM '{LABEL_SOURCE_HUMAN}') "
    "AND (s.label IS DISTINCT FROM t.label))"
)
_UPDATE = {**_UPDATE_ARRIVAL, **_UPDATE_LABEL}


class IngestBatch(BatchSteps):
    """What the ingest does with each micro-batch: MERGE the arrivals (the writer), then count them."""

    kind = "ingest"
    spec = IMAGES
    update = _UPDATE
    when = _UPDATE_WHEN
    # No transaction check before the batch runs: the MERGE skips a replay (and the report counts
    # it, as it always has) without a second table load per batch.
    skip_committed = False
    unread_files = True
    # One row per path: an image ingested again on another day updates its row (its stored load_date).
    staged_columns = ("load_date",)

    def __init__(
        self, report: IngestReport, lake: Lake, *, labeled: bool, on_batch: Callable[[IngestReport], None] | None
    ):
        self.report = report
        self.lake = lake
        self.labeled = labeled
        self.on_batch = on_batch

    def stage(self, table: pa.Table, txn: Transaction) -> Unstaged:
        """Each path under the load_date its row already has."""
        return Unstaged(keep_stored_rows(self.lake, table))

    def after_commit(self, batch: Committed) -> None:
        self.report.count(batch, labeled=self.labeled)
        if self.on_batch is not None:
            self.on_batch(self.report)


def _resolve_source(source: str) -> str:
    if "://" in source:
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise IngestError(f"source {source} does not exist")
    if not path.is_dir():
        raise IngestError(f"source {source} is not a folder")
    return str(path.resolve())


def _look_at_folder(folder: WatchedFolder, report: IngestReport) -> None:
    """Before the stream: count the files the glob skips, read changed error files again."""
    folder.load()
    found = folder.check()
    report.skipped_files = found.skipped_files
    report.reread_files = found.reread_files
    if found.outcome is not None:
        report.updated += found.outcome.updated


def ingest(
    settings: Settings,
    source: str,
    *,
    labeled: bool = False,
    classes: list[str] | None = None,
    glob: str = IMAGE_GLOB,
    max_files_per_trigger: int = 2000,
    on_batch: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Ingest every image under ``source`` not ingested before; return what happened."""
    source = _resolve_source(source)
    started = time.perf_counter()
    lake = open_lake(settings)
    lake.images()
    spark = get_spark(settings, "lakesight-ingest")
    known = frozenset(classes) if classes else None
    report = IngestReport(source=source)
    checkpoint = settings.checkpoint_uri(checkpoint_name("ingest", source))

    reader = spark.readStream.format("binaryFile").option("maxFilesPerTrigger", max_files_per_trigger)
    checks = FileChecks.of(settings)

    def mapper(it: Any) -> Any:
        return arrival_rows(it, checks=checks, labeled=labeled, classes=known)

    rows = image_file_stream(reader, source, glob).mapInPandas(mapper, ARRIVAL_DDL)
    if WatchedFolder.watches(source):
        _look_at_folder(
            WatchedFolder(
                source, glob, lake=lake, spark=spark, mapper=mapper, ddl=ARRIVAL_DDL, update=_UPDATE, when=_UPDATE_WHEN
            ),
            report,
        )

    writer = ExactlyOnceWriter(
        lake, IngestBatch(report, lake, labeled=labeled, on_batch=on_batch), checkpoint=checkpoint, totals=report
    )
    query = (
        rows.writeStream.foreachBatch(writer)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .queryName(checkpoint_name("ingest", source).replace("-", "_"))
        .start()
    )
    try:
        query.awaitTermination()
    finally:
        writer.release(query)
    report.seconds = time.perf_counter() - started
    report.table_version = lake.version(IMAGES)
    return report
