"""The spark engine: micro-batches MERGEd by delta-spark on the executors, where they were computed.

Same tables, keys, column ownership and partition-pruned MERGE predicate as the delta-rs engine
(:class:`infra.lake.Lake`), which it extends. A DataFrame source (a micro-batch of ingest or the
scoring stream, image bytes included) is written by delta-spark and never reaches the driver (with a
local master the stream's own processes score next to the driver: :class:`DriverRowsBatch`); rows
the driver built itself (an Arrow source: the labeling ledger and candidates, drift and promotion
records, the sent marks of earlier batches) are written by delta-rs, because they are already on
the driver and a delta-spark statement costs seconds where delta-rs takes tens of milliseconds
(docs/DEPLOY.md, "The lake engine"). Reads stay with delta-rs. Each engine reads and MERGEs what
the other wrote (tests/infra/test_spark_lake.py), and neither enables a table feature the other
cannot read: tables are always created by delta-rs, at reader 1 / writer 2.

Replay safety: a write carrying a :class:`Transaction` sets Delta's idempotent-DML confs
``spark.databricks.delta.write.txnAppId`` / ``txnVersion`` for that statement; Delta records the
pair with the commit and skips a statement whose pair it already holds (checked on the installed
version with a replayed batch: docs/DEPLOY.md, "The spark engine").
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from infra.lake import (
    ArrowBatch,
    Lake,
    MergeOutcome,
    MicroBatch,
    TableRef,
    Transaction,
    partition_values,
    pruned_predicate,
)
from infra.settings import Settings
from infra.tables import TableSpec, latest_per_path

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["DriverRowsBatch", "FrameBatch", "SparkLake", "conform_frame"]

log = logging.getLogger(__name__)

TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"
# The idempotency confs live in the session: one statement at a time may carry them.
_txn_lock = threading.Lock()


def conform_frame(spec: TableSpec, frame: DataFrame) -> DataFrame:
    """``frame`` as ``spec``'s columns in order and types (missing ones null, others dropped):
    the Spark side of :meth:`TableSpec.conform`, so ``INSERT *`` meets the table's schema."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type

    present = set(frame.columns)
    columns: list[Column] = []
    for field in spec.schema:
        kind = from_arrow_type(field.type)
        value = F.col(field.name) if field.name in present else F.lit(None)
        columns.append(value.cast(kind).alias(field.name))
    return frame.select(*columns)


class SparkLake(Lake):
    """:class:`Lake` whose DataFrame MERGEs and appends, and compaction, run through delta-spark."""

    def __init__(self, settings: Settings, *, reuse_tables: bool = False, spark: SparkSession | None = None):
        super().__init__(settings, reuse_tables=reuse_tables)
        self._spark = spark
        self._session_settings = settings  # the Spark session, when this lake starts it, needs them all
        self._preparing: dict[str, threading.Thread] = {}

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            from infra.spark import get_spark

            self._spark = get_spark(self._session_settings)
        return self._spark

    def frame(self, spec: TableSpec, source: pa.Table | DataFrame) -> DataFrame:
        """``source`` as a DataFrame of ``spec``'s columns (Arrow is sent to the session)."""
        if isinstance(source, pa.Table):
            return conform_frame(spec, self.spark.createDataFrame(spec.conform(source)))
        return conform_frame(spec, source)

    def _delta_table(self, spec: TableSpec, session: SparkSession) -> Any:
        from delta.tables import DeltaTable as SparkDeltaTable

        self.ensure(spec)  # created by delta-rs: the protocol both engines read
        return SparkDeltaTable.forPath(session, self.uri(spec))

    def prepare(self, spec: TableSpec) -> None:
        """Build ``spec``'s current Delta snapshot in a background thread, one at a time per table.

        A MERGE first builds the snapshot of the version it reads (the table's file list, a few
        Spark jobs over the log): on local[2] a 2,000-row MERGE into ``images`` took 1.94 s with it
        and 1.34 s once it was built (median of 10; docs/DEPLOY.md, "The lake engine"). Built
        between micro-batches, while the next one is listed and scored, it is off the MERGE's path;
        the MERGE reuses it while no other writer has committed since. A failure costs only that.
        """
        running = self._preparing.get(spec.name)
        if running is not None and running.is_alive():
            return
        thread = threading.Thread(target=self._build_snapshot, args=(spec,), name=f"snapshot-{spec.name}", daemon=True)
        self._preparing[spec.name] = thread
        thread.start()

    def wait_prepared(self, spec: TableSpec, timeout: float) -> bool:
        """Wait up to ``timeout`` s for :meth:`prepare` of ``spec`` to end; whether none is running."""
        running = self._preparing.get(spec.name)
        if running is not None:
            running.join(timeout)
        return running is None or not running.is_alive()

    def _build_snapshot(self, spec: TableSpec) -> None:
        started = time.perf_counter()
        try:
            self._delta_table(spec, self.spark).toDF().inputFiles()  # lists the files: builds the state
        except Exception as exc:  # noqa: BLE001 - an optimisation: the MERGE builds it itself
            log.debug("building the snapshot of %s ahead of its MERGE failed: %s", spec.name, exc)
            return
        log.debug("snapshot of %s built ahead of its MERGE in %.2f s", spec.name, time.perf_counter() - started)

    def micro_batch(self, frame: Any, *, driver_content: Any = None, completed_on_driver: bool = False) -> MicroBatch:
        """A foreachBatch micro-batch kept on the executors (see :class:`FrameBatch`), or, where the job
        builds the rows to MERGE on the driver, MERGEd from those rows (:class:`DriverRowsBatch`)."""
        if completed_on_driver:
            return DriverRowsBatch(self, frame)
        return FrameBatch(self, frame, driver_content)

    def merge(
        self,
        spec: TableSpec,
        source: pa.Table | DataFrame,
        *,
        update: dict[str, str] | None = None,
        when: str | None = None,
        insert: bool = True,
        txn: Transaction | None = None,
        max_attempts: int = 20,
        partitions: dict[str, list[Any]] | None = None,
    ) -> MergeOutcome:
        """:meth:`Lake.merge` of a DataFrame on the executors (an Arrow source goes to delta-rs).
        ``partitions``: the partition values the source touches when the caller knows them (else one
        small Spark job finds them)."""
        if isinstance(source, pa.Table):  # rows built on the driver: see the class docstring
            return super().merge(
                spec, source, update=update, when=when, insert=insert, txn=txn, max_attempts=max_attempts
            )
        started = time.perf_counter()
        frame = conform_frame(spec, source)
        if partitions is None:
            partitions = _frame_partitions(spec, frame)
        predicate = pruned_predicate(spec, partitions)
        session = frame.sparkSession

        def statement() -> Any:
            builder = self._delta_table(spec, session).alias("t").merge(frame.alias("s"), predicate)
            if update:
                builder = builder.whenMatchedUpdate(condition=when, set=update)
            if insert:
                builder = builder.whenNotMatchedInsertAll()
            return _dml_counts(builder.execute())

        outcome = self._run(spec, statement, session, txn, max_attempts, started)
        self.prepare(spec)  # for the next micro-batch's MERGE
        return outcome

    def append(self, spec: TableSpec, source: pa.Table | DataFrame, *, txn: Transaction | None = None) -> MergeOutcome:
        if isinstance(source, pa.Table):
            return super().append(spec, source, txn=txn)
        started = time.perf_counter()
        frame = conform_frame(spec, source)
        self.ensure(spec)
        uri = self.uri(spec)

        def statement() -> tuple[int, int]:
            frame.write.format("delta").mode("append").save(uri)
            return 0, 0  # Delta's append reports no counts

        return self._run(spec, statement, frame.sparkSession, txn, 20, started)

    def compact(
        self, name: TableRef, column: str | None = None, values: Iterable[Any] = (), *, target_bytes: int | None = None
    ) -> dict[str, Any]:
        """:meth:`Lake.compact` as delta-spark's OPTIMIZE (bin-packing, marked as no data change)."""
        from delta.tables import DeltaTable as SparkDeltaTable

        started = time.perf_counter()
        chosen = sorted({v.isoformat() if isinstance(v, dt.date) else str(v) for v in values})
        session = self.spark
        optimizer = SparkDeltaTable.forPath(session, self.uri(name)).optimize()
        if column is not None and chosen:
            optimizer = optimizer.where(f"{column} IN ({', '.join(repr(v) for v in chosen)})")
        conf = {"spark.databricks.delta.optimize.minFileSize": str(target_bytes)} if target_bytes else {}
        with _session_conf(session, conf):
            metrics = optimizer.executeCompaction().collect()[0]["metrics"]
        return {
            "files_removed": int(metrics["numFilesRemoved"]),
            "files_added": int(metrics["numFilesAdded"]),
            "seconds": round(time.perf_counter() - started, 4),
        }

    def _run(
        self,
        spec: TableSpec,
        statement: Any,
        session: SparkSession,
        txn: Transaction | None,
        max_attempts: int,
        started: float,
    ) -> MergeOutcome:
        """Run a write statement with ``txn``'s idempotency confs, retrying a concurrent commit."""
        from delta.exceptions import DeltaConcurrentModificationException

        conf = {TXN_APP_ID: txn.app_id, TXN_VERSION: str(txn.version)} if txn is not None else {}
        for attempt in range(1, max_attempts + 1):
            if txn is not None and self._committed(spec, txn):
                return MergeOutcome(skipped=True, version=self.version(spec), attempts=attempt)
            try:
                with _txn_lock, _session_conf(session, conf):
                    result = statement()
            except DeltaConcurrentModificationException as exc:
                if attempt == max_attempts:
                    raise
                log.info("commit conflict on %s (attempt %d): %s; retrying", spec, attempt, str(exc)[:200])
                time.sleep(min(2.0, 0.05 * attempt) * (1 + random.random()))
                continue
            inserted, updated = result
            return MergeOutcome(
                skipped=False,
                version=self.version(spec),
                inserted=inserted,
                updated=updated,
                attempts=attempt,
                seconds=time.perf_counter() - started,
            )
        raise AssertionError("unreachable")

    def _committed(self, spec: TableSpec, txn: Transaction) -> bool:
        done = self.committed_version(spec, txn.app_id) if self.exists(spec) else None
        return done is not None and done >= txn.version


class FrameBatch:
    """The spark engine's :class:`~infra.lake.MicroBatch`: MERGEd by delta-spark where it was computed.

    The driver collects its rows without image bytes (for counters, status and drift), plus the
    content of the rows ``driver_content(frame)`` selects (the scoring stream's unsure images, for
    labeling).
    """

    def __init__(self, lake: SparkLake, frame: DataFrame, driver_content: Any = None):
        from pyspark import StorageLevel

        self.lake = lake
        self.frame = frame.persist(StorageLevel.MEMORY_AND_DISK)  # scored once: read by the collect and the MERGE
        self.table: pa.Table = _without_content(self.frame, driver_content).toArrow()  # runs the Spark job
        self._collected = self.table.num_rows
        self._latest = False

    def extend_to(self, table: pa.Table) -> None:
        """Take ``table``: :attr:`table` with rows appended at its end (files Spark listed, never read)."""
        self.table = table

    def keep_latest_per_path(self) -> None:
        self.table = latest_per_path(self.table)
        self._latest = True

    def merge(
        self,
        spec: TableSpec,
        merged: pa.Table,
        *,
        update: dict[str, str] | None,
        when: str | None,
        txn: Transaction,
        staged_columns: tuple[str, ...] = (),
    ) -> MergeOutcome:
        """MERGE the executors' rows, with the driver's extra rows and the ``staged_columns`` the
        job's ``stage`` step set on ``merged`` (joined back by path)."""
        source = self.lake.frame(spec, self.frame)
        extra = self.table.num_rows - self._collected
        if extra > 0:  # error rows for the files Spark did not read
            source = source.unionByName(self.lake.frame(spec, self.table.slice(self._collected)))
        if self._latest:
            source = _latest_per_path(source)
        source = _with_staged_columns(source, merged, staged_columns)
        return self.lake.merge(
            spec, source, update=update, when=when, txn=txn, partitions=partition_values(spec, merged)
        )

    def close(self) -> None:
        self.frame.unpersist()


class DriverRowsBatch(ArrowBatch):
    """A micro-batch whose rows the driver completed, MERGEd by delta-spark from those rows.

    The scoring stream's own processes (``streams.scoring.pool``, a local master only) read and
    score the listed files next to the driver, so the scored rows, image bytes included, are on the
    driver already; they go to the session once, as the MERGE's source. The MERGE stays
    delta-spark's, with the batch's transaction, as for :class:`FrameBatch`.
    """

    lake: SparkLake

    def merge(
        self,
        spec: TableSpec,
        merged: pa.Table,
        *,
        update: dict[str, str] | None,
        when: str | None,
        txn: Transaction,
        staged_columns: tuple[str, ...] = (),
    ) -> MergeOutcome:
        """MERGE ``merged`` (every column the job's steps set is in it) through delta-spark."""
        source = self.lake.frame(spec, merged)
        return self.lake.merge(
            spec, source, update=update, when=when, txn=txn, partitions=partition_values(spec, merged)
        )


def _without_content(frame: DataFrame, driver_content: Any) -> DataFrame:
    """The micro-batch's rows as the driver sees them: ``content`` only where ``driver_content`` asks."""
    from pyspark.sql import functions as F

    wanted = driver_content(frame) if driver_content is not None else None
    if wanted is None:  # the job needs no image bytes on the driver
        wanted = F.lit(False)
    others = [F.col(name) for name in frame.columns if name != "content"]
    return frame.select(*others, F.when(wanted, F.col("content")).alias("content"))


def _with_staged_columns(source: DataFrame, merged: pa.Table, names: tuple[str, ...]) -> DataFrame:
    """``source`` with the values the driver gave ``names`` in ``merged`` (by path)."""
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    for name in names:
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


def _latest_per_path(frame: DataFrame) -> DataFrame:
    """:func:`infra.tables.latest_per_path` on the executors: one row per path, the greatest ``modified_at``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = F.col("modified_at").desc_nulls_last() if "modified_at" in frame.columns else F.lit(0)
    rank = F.row_number().over(Window.partitionBy("path").orderBy(order, F.monotonically_increasing_id().desc()))
    return frame.withColumn("_rank", rank).filter(F.col("_rank") == 1).drop("_rank")


class _session_conf:
    """Set session confs for one statement and restore what was there before."""

    def __init__(self, session: SparkSession, conf: dict[str, str]):
        self.session = session
        self.conf = conf
        self.before: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.conf.items():
            self.before[key] = self.session.conf.get(key, None)
            self.session.conf.set(key, value)

    def __exit__(self, *_exc: object) -> None:
        for key, value in self.before.items():
            if value is None:
                self.session.conf.unset(key)
            else:
                self.session.conf.set(key, value)


def _frame_partitions(spec: TableSpec, frame: DataFrame) -> dict[str, list[Any]]:
    """The partition values a DataFrame holds (one small aggregate per partition column)."""
    return {column: [row[0] for row in frame.select(column).distinct().collect()] for column in spec.partition_by}


def _dml_counts(result: DataFrame | None) -> tuple[int, int]:
    """``(inserted, updated)`` from delta-spark's MERGE result frame."""
    rows = result.collect() if result is not None else []
    if not rows:
        return 0, 0
    row = rows[0].asDict()
    return int(row.get("num_inserted_rows") or 0), int(row.get("num_updated_rows") or 0)
