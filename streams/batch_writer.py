"""The foreachBatch body shared by the ingest and the scoring stream: each micro-batch MERGEd exactly once.

A micro-batch is written with ``(app id, batch id)`` recorded in its Delta commit (the app id is the
query's, kept in the checkpoint: ``streams.checkpoint.names.query_app_id``), so a batch Spark replays
after a crash changes nothing. What differs between the jobs comes in as arguments: the MERGE's
update expressions, a step before the MERGE (the scoring stream's labeling hand-off) and one after
the commit (counters, status, compaction).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from infra.lake import Lake, MergeOutcome, Transaction, partition_values
from infra.spark import CallbackConnections
from infra.spark_lake import SparkLake
from infra.tables import TableSpec
from streams.checkpoint.names import query_app_id
from streams.checkpoint.source_log import listed_files
from streams.file_rows import with_unread_files


class Staged(Protocol):
    """What a ``before_merge`` step returns: at least the table to MERGE."""

    @property
    def table(self) -> pa.Table: ...


@dataclass(frozen=True)
class Committed:
    """One micro-batch the writer has MERGEd, handed to the job's ``after_commit``."""

    batch_id: int
    table: pa.Table  # as collected, with rows for unread files, duplicate keys collapsed
    merged: pa.Table  # what the MERGE was given (``staged.table`` when there is a before_merge step)
    staged: Any  # the before_merge step's result, None without one
    outcome: MergeOutcome
    began: float  # time.perf_counter() before the micro-batch's Spark job ran
    collected: float  # time.perf_counter() once its rows were on the driver
    committed_at: float  # time.time() right after the MERGE committed
    notes: dict[str, str | None] = field(default_factory=dict)  # the ``note_columns``: first value of each

    @cached_property
    def errors(self) -> int:
        """Rows recorded with an error (computed once: the report and the status both need it)."""
        return int(pc.sum(pc.is_valid(self.table.column("error"))).as_py() or 0)


@dataclass(kw_only=True)
class BatchTotals:
    """The counters every exactly-once job reports."""

    batches: int = 0
    inserted: int = 0
    updated: int = 0
    errors: int = 0
    skipped_batches: int = 0
    seconds: float = 0.0
    table_version: int | None = None

    def add(self, batch: Committed) -> None:
        self.batches += 1
        self.inserted += batch.outcome.inserted
        self.updated += batch.outcome.updated
        self.errors += batch.errors
        self.skipped_batches += int(batch.outcome.skipped)

    def as_dict(self) -> dict[str, object]:
        """Every field of the report (counters included), JSON-ready."""
        out: dict[str, object] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name] = dict(value) if isinstance(value, Counter) else value
        return out


def dedupe_paths(table: pa.Table) -> pa.Table:
    """Keep one row per path, the latest event's: a MERGE source must not name one target row twice.

    Latest is the greatest ``modified_at`` (an arrival's event time, a file's modification time),
    then the later row. Row order alone is not event order: Spark concatenates a micro-batch's
    partitions in its own order, so two records of one blob in different files may come either way.
    """
    if table.num_rows < 2 or pc.count_distinct(table.column("path")).as_py() == table.num_rows:
        return table
    if "modified_at" in table.column_names:
        times = pc.fill_null(table.column("modified_at").cast(pa.int64()), -(2**63)).to_pylist()
    else:
        times = [0] * table.num_rows
    latest: dict[str, tuple[int, int]] = {}
    for row, (path, moment) in enumerate(zip(table.column("path").to_pylist(), times, strict=True)):
        latest[path] = max(latest.get(path, (moment, row)), (moment, row))
    return table.take(pa.array(sorted(row for _, row in latest.values()), type=pa.int64()))


def latest_per_path(frame: Any) -> Any:
    """:func:`dedupe_paths` on the executors: one row per path, the greatest ``modified_at``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = F.col("modified_at").desc_nulls_last() if "modified_at" in frame.columns else F.lit(0)
    rank = F.row_number().over(Window.partitionBy("path").orderBy(order, F.monotonically_increasing_id().desc()))
    return frame.withColumn("_rank", rank).filter(F.col("_rank") == 1).drop("_rank")


def _notes(table: pa.Table, columns: tuple[str, ...]) -> dict[str, str | None]:
    """The first non-null value of each of ``columns`` in ``table`` (None where all are null)."""
    notes: dict[str, str | None] = {}
    for name in columns:
        values = pc.drop_null(table.column(name)) if name in table.column_names else pa.array([], pa.string())
        notes[name] = values[0].as_py() if len(values) else None
    return notes


class ExactlyOnceWriter:
    """Callable as ``foreachBatch``: collect the micro-batch, MERGE it into ``spec`` with its transaction id.

    * ``skip_committed``: a batch this query already committed is skipped before its Spark job
      runs (the scoring stream, where that job reads and scores every image). Without it the
      MERGE itself skips the replay, after the batch was collected.
    * ``unread_files``: add error rows for the files Spark's file source listed for the batch but
      did not read (zero-byte, vanished); ``on_listed`` receives how many files it listed.
    * ``dedupe``: collapse rows naming the same path (arrival records delivered twice).
    * ``before_merge(table, txn)``: returns an object whose ``table`` is MERGEd instead.
    * ``after_commit(committed)``: the job's bookkeeping; not called for an empty or skipped batch.
    * ``note_columns``: columns the executors fill with word for the driver (not table columns);
      their first non-null value reaches ``after_commit`` in ``committed.notes``.

    With the spark engine (``lake`` a :class:`~infra.spark_lake.SparkLake`) the micro-batch stays on
    the executors: it is persisted there, MERGEd by delta-spark, and the driver collects only its rows without image
    bytes (for the counters, status and drift), plus the content of the rows
    ``driver_content(frame)`` selects (the scoring stream's unsure images, for labeling).
    ``staged_columns``: the columns ``before_merge`` sets on the driver's copy, sent back to the
    executors' rows by path before the MERGE.

    Also closes the py4j connections foreachBatch ran on once the query stopped (``release``) and
    sets ``batch_done`` whenever a call returns, so a stop can wait for the batch in flight.
    """

    def __init__(
        self,
        lake: Lake,
        spec: TableSpec,
        *,
        checkpoint: str,
        kind: str,
        totals: BatchTotals,
        update: dict[str, str] | None = None,
        when: str | None = None,
        skip_committed: bool = True,
        unread_files: bool = False,
        dedupe: bool = False,
        on_listed: Callable[[int], None] | None = None,
        before_merge: Callable[[pa.Table, Transaction], Staged] | None = None,
        after_commit: Callable[[Committed], None] | None = None,
        note_columns: tuple[str, ...] = (),
        driver_content: Callable[[Any], Any] | None = None,
        staged_columns: tuple[str, ...] = (),
    ):
        self.lake = lake
        self.spec = spec
        self.checkpoint = checkpoint
        self.kind = kind
        self.totals = totals
        self.update = update
        self.when = when
        self.skip_committed = skip_committed
        self.unread_files = unread_files
        self.dedupe = dedupe
        self.on_listed = on_listed
        self.before_merge = before_merge
        self.after_commit = after_commit
        self.note_columns = note_columns
        self.driver_content = driver_content
        self.staged_columns = staged_columns
        self.batch_done = threading.Event()
        self._callbacks = CallbackConnections()

    def app_id(self) -> str:
        """The transaction app id of the checkpoint's current query."""
        return query_app_id(self.checkpoint, self.kind)

    def __call__(self, batch: Any, batch_id: int) -> None:
        self._callbacks.record()
        try:
            self._write(batch, batch_id)
        finally:
            self.batch_done.set()

    def release(self, query: Any) -> None:
        """Once ``query`` has stopped: close the connections its foreachBatch calls came in on."""
        self._callbacks.release(query)

    def _write(self, batch: Any, batch_id: int) -> None:
        txn = Transaction(self.app_id(), batch_id)
        if self.skip_committed and self._already_committed(txn):
            self.totals.skipped_batches += 1  # replayed after a crash: already in the table
            return
        if isinstance(self.lake, SparkLake):
            self._write_on_executors(self.lake, batch, batch_id, txn)
            return
        began = time.perf_counter()
        table = batch.toArrow()  # runs the micro-batch's Spark job
        collected = time.perf_counter()
        notes = _notes(table, self.note_columns)
        table = self._with_listed_files(table, batch_id)
        if table.num_rows == 0:
            return
        if self.dedupe:
            table = dedupe_paths(table)
        staged = self.before_merge(table, txn) if self.before_merge is not None else None
        merged = table if staged is None else staged.table
        outcome = self.lake.merge(self.spec, merged, update=self.update, when=self.when, txn=txn)
        self._report(Committed(batch_id, table, merged, staged, outcome, began, collected, time.time(), notes))

    def _report(self, committed: Committed) -> None:
        if self.after_commit is not None:
            self.after_commit(committed)

    def _write_on_executors(self, lake: SparkLake, batch: Any, batch_id: int, txn: Transaction) -> None:
        """The spark engine's path: MERGE the persisted micro-batch where it is; collect no image bytes."""
        from pyspark import StorageLevel

        began = time.perf_counter()
        frame = batch.persist(StorageLevel.MEMORY_AND_DISK)  # scored once, read by the collect and the MERGE
        try:
            scored = self._without_content(frame).toArrow()  # runs the micro-batch's Spark job
            collected = time.perf_counter()
            notes = _notes(scored, self.note_columns)
            table = self._with_listed_files(scored, batch_id)
            if table.num_rows == 0:
                return
            source = lake.frame(self.spec, frame)
            if table.num_rows > scored.num_rows:  # error rows for the files Spark did not read
                source = source.unionByName(lake.frame(self.spec, table.slice(scored.num_rows)))
            if self.dedupe:
                table, source = dedupe_paths(table), latest_per_path(source)
            staged = self.before_merge(table, txn) if self.before_merge is not None else None
            merged = table if staged is None else staged.table
            source = self._with_staged_columns(source, merged)
            outcome = lake.merge(
                self.spec,
                source,
                update=self.update,
                when=self.when,
                txn=txn,
                partitions=partition_values(self.spec, merged),
            )
            self._report(Committed(batch_id, table, merged, staged, outcome, began, collected, time.time(), notes))
        finally:
            frame.unpersist()

    def _without_content(self, frame: Any) -> Any:
        """The micro-batch's rows as the driver sees them: ``content`` only where ``driver_content`` asks."""
        from pyspark.sql import functions as F

        wanted = self.driver_content(frame) if self.driver_content is not None else F.lit(False)
        others = [F.col(name) for name in frame.columns if name != "content"]
        return frame.select(*others, F.when(wanted, F.col("content")).alias("content"))

    def _with_staged_columns(self, source: Any, merged: pa.Table) -> Any:
        """``source`` with the values ``before_merge`` gave ``staged_columns`` on the driver (by path)."""
        from pyspark.sql import functions as F

        for name in self.staged_columns:
            if name not in merged.column_names:
                continue  # the step set nothing in this batch
            values = merged.select(["path", name]).filter(pc.is_valid(merged.column(name)))
            if values.num_rows == 0:
                continue
            staged = source.sparkSession.createDataFrame(values).withColumnRenamed(name, "_staged")
            source = (
                source.join(F.broadcast(staged), "path", "left")
                .withColumn(name, F.coalesce(F.col("_staged"), F.col(name)))
                .drop("_staged")
            )
        return source

    def _already_committed(self, txn: Transaction) -> bool:
        done = self.lake.committed_version(self.spec, txn.app_id)
        return done is not None and done >= txn.version

    def _with_listed_files(self, table: pa.Table, batch_id: int) -> pa.Table:
        if not self.unread_files and self.on_listed is None:
            return table  # the source log is read only for what needs it
        listed = listed_files(self.checkpoint, batch_id)
        if self.on_listed is not None:
            self.on_listed(len(listed))
        return with_unread_files(table, self.checkpoint, batch_id, listed) if self.unread_files else table
