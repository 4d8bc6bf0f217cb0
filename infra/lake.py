"""Delta tables through delta-rs: create, idempotent keyed MERGE with conflict retry, snapshots.

Every writer goes through :func:`Lake.merge`. It

* names the partitions the batch touches in the predicate, so cost does not grow with the table;
* records a :class:`Transaction` ``(app_id, version)`` with the commit and skips a batch already
  committed, so a replayed micro-batch or event changes nothing;
* retries a commit conflict on a fresh snapshot, because the scoring stream and the label
  handlers both write ``images``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import ColumnProperties, CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from infra.errors import LakesightError
from infra.locations import local_path
from infra.settings import Settings
from infra.tables import IMAGES, TableSpec, latest_per_path

__all__ = [
    "Lake",
    "LakeError",
    "MergeOutcome",
    "TableRef",
    "Transaction",
    "from_source",
    "partition_values",
    "pruned_predicate",
]

# A table named by its spec or by its name (a table the lake holds but lakesight does not define).
TableRef = str | TableSpec

log = logging.getLogger(__name__)

# Parquet truncates string statistics to 64 bytes by default: every image path under one long
# folder prefix then shares a file's min and max, and a MERGE keyed on path opens every file
# of the partition (a batch's MERGE rose from 0.26 s to 0.76 s over a 20-minute soak). Full
# paths in the statistics let a batch of newer, time-ordered names skip the older files. Image
# bytes get no statistics: they never filter anything and would only bloat every footer.
PATH_STATS_BYTES = 2048
LOOKUP_CHUNK = 1000  # keys per query of Lake.lookup
WRITER_PROPERTIES = WriterProperties(
    statistics_truncate_length=PATH_STATS_BYTES,
    column_properties={"content": ColumnProperties(statistics_enabled="NONE")},
)


class LakeError(LakesightError, RuntimeError):
    """The lake cannot be used as configured (unwritable root, missing table, …)."""


@dataclass(frozen=True)
class MergeOutcome:
    skipped: bool
    version: int | None
    inserted: int = 0
    updated: int = 0
    attempts: int = 1
    seconds: float = 0.0


def _sql_literal(value: Any) -> str:
    if isinstance(value, dt.date):
        return f"'{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def from_source(columns: Iterable[str]) -> dict[str, str]:
    """MERGE update expressions copying ``columns`` from the source row."""
    return {c: f"s.{c}" for c in columns}


@dataclass(frozen=True)
class LakeConfig:
    """What a lake handle reads of the settings: where the tables are and how to reach them."""

    root: str
    storage_options: dict[str, str] | None
    engine: str

    @classmethod
    def of(cls, settings: Settings) -> LakeConfig:
        return cls(settings.lake_root, settings.storage_options() or None, settings.lake_engine)

    def table_uri(self, table: str) -> str:
        return f"{self.root.rstrip('/')}/{table}"


def open_lake(settings: Settings, *, reuse_tables: bool = False) -> Lake:
    """The lake for a Spark job, written by the engine ``settings.lake_engine`` names."""
    if settings.lake_engine == "spark":
        from infra.spark_lake import SparkLake  # the spark engine extends this module's Lake

        return SparkLake(settings, reuse_tables=reuse_tables)
    return Lake(settings, reuse_tables=reuse_tables)


class MicroBatch(Protocol):
    """One foreachBatch micro-batch as a lake engine holds it for the MERGE (:meth:`Lake.micro_batch`).

    ``table`` is what the driver sees; where the rows and their image bytes live is the engine's
    business, so a job's writer reads the same whichever engine writes.
    """

    table: pa.Table

    def extend_to(self, table: pa.Table) -> None: ...

    def keep_latest_per_path(self) -> None: ...

    def merge(
        self,
        spec: TableSpec,
        merged: pa.Table,
        *,
        update: dict[str, str] | None,
        when: str | None,
        txn: Transaction,
        staged_columns: tuple[str, ...] = (),
    ) -> MergeOutcome: ...

    def close(self) -> None: ...


class ArrowBatch:
    """A micro-batch collected to the driver as Arrow and MERGEd by delta-rs (the embedded engine).

    The delta-rs engine's :class:`MicroBatch`: every row, image bytes included, on the driver.
    """

    def __init__(self, lake: Lake, frame: Any):
        self.lake = lake
        self.table: pa.Table = frame.toArrow()  # runs the micro-batch's Spark job

    def extend_to(self, table: pa.Table) -> None:
        """Take ``table``: :attr:`table` with rows appended at its end (files Spark listed, never read)."""
        self.table = table

    def keep_latest_per_path(self) -> None:
        self.table = latest_per_path(self.table)

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
        """MERGE ``merged`` (:attr:`table` as the job's ``stage`` step left it) with ``txn``."""
        return self.lake.merge(spec, merged, update=update, when=when, txn=txn)

    def close(self) -> None:
        """Nothing is held beyond the Arrow table."""


class Lake:
    """Access to the lake's Delta tables for one settings object, written through delta-rs."""

    def __init__(self, settings: Settings, *, reuse_tables: bool = False):
        """``reuse_tables`` keeps each opened table and brings it up to date incrementally (only
        the new commits are read) instead of replaying the log from the last checkpoint on every
        call: for one writer thread committing often (the scoring stream), where a full load
        costs up to 99 JSON commits. Not for objects shared between threads.
        """
        self.config = LakeConfig.of(settings)  # the whole settings object stays with the caller
        self._reuse = reuse_tables
        self._open: dict[str, DeltaTable] = {}
        self.root = self.config.root
        self.storage_options = self.config.storage_options
        root = local_path(self.root)
        if root is not None:
            self._prepare_local_root(root)

    @staticmethod
    def _prepare_local_root(root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LakeError(f"cannot create lake root {root}: {exc.strerror}") from exc
        if not os.access(root, os.W_OK | os.X_OK):
            raise LakeError(f"lake root {root} is not writable by this user")

    # Table handles -----------------------------------------------------------------------------
    def uri(self, table: TableRef) -> str:
        return self.config.table_uri(str(table))

    def exists(self, table: TableRef) -> bool:
        return DeltaTable.is_deltatable(self.uri(table), storage_options=self.storage_options)

    def table(self, ref: TableRef, version: int | None = None) -> DeltaTable:
        name = str(ref)
        reusable = self._reuse and version is None
        if reusable and name in self._open:
            table = self._open[name]
            table.update_incremental()
            return table
        try:
            table = DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
        except TableNotFoundError as exc:
            raise LakeError(f"table {name!r} does not exist at {self.uri(name)}") from exc
        if reusable:
            self._open[name] = table
        return table

    def ensure(self, spec: TableSpec) -> DeltaTable:
        """Open ``spec``'s table, creating it empty when missing."""
        name = spec.name
        if name in self._open:
            return self.table(name)
        if not self.exists(name):
            try:
                write_deltalake(
                    self.uri(name),
                    spec.schema.empty_table(),
                    partition_by=list(spec.partition_by) or None,
                    mode="append",
                    storage_options=self.storage_options,
                    writer_properties=WRITER_PROPERTIES,
                )
            except Exception as exc:  # a concurrent creator may have won the race
                if not self.exists(name):
                    raise LakeError(f"cannot create table {name!r}: {exc}") from exc
        table = self.table(name)
        _add_missing_columns(table, spec)
        return table

    def images(self) -> DeltaTable:
        return self.ensure(IMAGES)

    # Reads --------------------------------------------------------------------------------------
    def read(
        self,
        name: TableRef,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
        filters: Any = None,
    ) -> pa.Table:
        """A snapshot of ``name`` (latest, or pinned ``version``) as Arrow.

        ``filters`` should name only columns in ``columns``: where pyarrow cannot push a filter into
        the scan, the rows are filtered after it.
        """
        table = self.table(name, version)
        if not ARROW_READS_DELTA_RS:
            return read_through_sql(table, columns, filters)
        dataset = table.to_pyarrow_dataset()
        try:
            return dataset.to_table(columns=columns, filter=filters)
        except pa.ArrowNotImplementedError:
            if filters is None:
                raise
            # delta-rs writes string columns into its files as string_view, and pyarrow cannot compare
            # a string literal with those files' statistics ("no kernel matching input types (string,
            # string_view)"): the same rows, filtered once read.
            return dataset.to_table(columns=columns).filter(filters)

    def lookup(self, spec: TableSpec, column: str, keys: Iterable[str], columns: list[str]) -> pa.Table:
        """The rows of ``spec`` whose ``column`` is one of ``keys`` (``columns`` of them); only those are read.

        Through delta-rs SQL, whose scan prunes files by their statistics: a pyarrow dataset filter on
        a string column fails on delta-rs's string_view statistics. An empty table when the table
        does not exist yet; a table made by an older lakesight gains the spec's new columns first.
        """
        wanted = sorted(set(keys))
        if not wanted or not self.exists(spec):
            return pa.table({name: pa.array([], spec.schema.field(name).type) for name in columns})
        from deltalake import QueryBuilder

        table = self.ensure(spec)
        parts = []
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            literals = ", ".join(_sql_literal(key) for key in wanted[start : start + LOOKUP_CHUNK])
            query = f"select {', '.join(columns)} from snapshot where {column} in ({literals})"
            result = QueryBuilder().register("snapshot", table).execute(query)
            found = pa.RecordBatchReader._import_from_c_capsule(result.__arrow_c_stream__()).read_all()
            parts.append(found.cast(pa.schema([spec.schema.field(name) for name in columns])))
        return pa.concat_tables(parts)

    def version(self, name: TableRef) -> int:
        return self.table(name).version()

    def history(self, name: TableRef, limit: int | None = None) -> list[dict[str, Any]]:
        return self.table(name).history(limit)

    def committed_version(self, name: TableRef, app_id: str) -> int | None:
        """The last transaction version ``app_id`` committed to ``name`` (None if never)."""
        return self.table(name).transaction_version(app_id)

    def summary(self, names: Iterable[TableRef] | None = None) -> list[dict[str, Any]]:
        """Version, row count and file count of each table under the lake root."""
        if names is None:
            names = self.table_names()
        rows = []
        for name in names:
            table = self.table(name)
            actions = pa.table(table.get_add_actions(flatten=True))
            records = pc.sum(actions.column("num_records")).as_py() if actions.num_rows else 0
            rows.append(
                {
                    "table": str(name),
                    "version": table.version(),
                    "versions": table.version() + 1,
                    "rows": int(records or 0),
                    "files": actions.num_rows,
                    "partitions": table.metadata().partition_columns,
                }
            )
        return rows

    def table_names(self) -> list[str]:
        root = local_path(self.root)
        if root is None:
            return [IMAGES.name]
        return sorted(p.name for p in root.iterdir() if (p / "_delta_log").is_dir())

    def prepare(self, spec: TableSpec) -> None:
        """Make the next MERGE into ``spec`` cheaper where the engine can do so ahead of time (the
        spark engine builds the table's snapshot; delta-rs has nothing to prepare)."""

    def micro_batch(self, frame: Any, *, driver_content: Any = None, completed_on_driver: bool = False) -> MicroBatch:
        """A foreachBatch micro-batch ready to MERGE: collected to the driver. ``driver_content`` and
        ``completed_on_driver`` (the job builds the rows to MERGE on the driver) are the spark engine's
        concern: here the driver has every row and MERGEs it."""
        return ArrowBatch(self, frame)

    # Writes -------------------------------------------------------------------------------------
    def merge(
        self,
        spec: TableSpec,
        source: pa.Table,
        *,
        update: dict[str, str] | None = None,
        when: str | None = None,
        insert: bool = True,
        txn: Transaction | None = None,
        max_attempts: int = 20,
    ) -> MergeOutcome:
        """MERGE ``source`` into ``spec``'s table, keyed on its keys within the partitions it touches.

        Matched rows get ``update`` (target column → SQL expression over ``s.``/``t.``) when the
        predicate ``when`` holds; unmatched rows are inserted when ``insert``. With ``txn`` the
        commit records ``(txn.app_id, txn.version)``, and a version that app already committed is
        skipped.
        """
        started = time.perf_counter()
        source = spec.conform(source)
        if source.num_rows == 0:
            return MergeOutcome(skipped=True, version=None)
        table = self.ensure(spec)
        predicate = pruned_predicate(spec, partition_values(spec, source))
        properties = CommitProperties(app_transactions=[txn]) if txn is not None else None
        for attempt in range(1, max_attempts + 1):
            if txn is not None and _already_committed(table, txn):
                return MergeOutcome(skipped=True, version=table.version(), attempts=attempt)
            builder = table.merge(
                source,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                commit_properties=properties,
                writer_properties=WRITER_PROPERTIES,
                # The source is a small in-memory batch: materialised, its key ranges prune
                # target files by their statistics (the streamed default skips that).
                streamed_exec=False,
            )
            if update:
                builder = builder.when_matched_update(updates=update, predicate=when)
            if insert:
                builder = builder.when_not_matched_insert_all()
            try:
                metrics = builder.execute()
            except CommitFailedError as exc:
                if attempt == max_attempts:
                    raise
                log.info("commit conflict on %s (attempt %d): %s; retrying", spec, attempt, exc)
                time.sleep(min(2.0, 0.05 * attempt) * (1 + random.random()))
                table = self.table(spec)
                continue
            return MergeOutcome(
                skipped=False,
                version=table.version(),
                inserted=int(metrics.get("num_target_rows_inserted", 0)),
                updated=int(metrics.get("num_target_rows_updated", 0)),
                attempts=attempt,
                seconds=time.perf_counter() - started,
            )
        raise AssertionError("unreachable")

    def append(self, spec: TableSpec, source: pa.Table, *, txn: Transaction | None = None) -> MergeOutcome:
        """Append ``source`` to ``spec``'s table (no key match): for tables that only grow.

        With ``txn`` a version that app already committed is skipped, as in :meth:`merge`.
        """
        started = time.perf_counter()
        source = spec.conform(source)
        if source.num_rows == 0:
            return MergeOutcome(skipped=True, version=None)
        table = self.ensure(spec)
        if txn is not None and _already_committed(table, txn):
            return MergeOutcome(skipped=True, version=table.version())
        write_deltalake(
            table,
            source,
            mode="append",
            partition_by=list(spec.partition_by) or None,
            commit_properties=CommitProperties(app_transactions=[txn]) if txn is not None else None,
            writer_properties=WRITER_PROPERTIES,
        )
        table.update_incremental()
        return MergeOutcome(
            skipped=False, version=table.version(), inserted=source.num_rows, seconds=time.perf_counter() - started
        )

    def compact(
        self, name: TableRef, column: str | None = None, values: Iterable[Any] = (), *, target_bytes: int | None = None
    ) -> dict[str, Any]:
        """Bin-pack small files (of the partitions where ``column`` is one of ``values``; all without).

        A frequent writer adds a file per commit, and a keyed MERGE scans every file of the
        partitions it names: without this its cost grows with the number of commits. The rows do
        not change (the commit is marked as no data change), so readers and time travel are not
        affected. A concurrent MERGE makes it fail with ``CommitFailedError``: callers retry later.
        Files of ``target_bytes`` or more are left alone (default: the table's target, 100 MiB),
        so a frequent compaction does not rewrite the same growing file each time.
        """
        started = time.perf_counter()
        table = self.table(name)
        chosen = sorted({v.isoformat() if isinstance(v, dt.date) else str(v) for v in values})
        filters = [(column, "in", chosen)] if column is not None and chosen else None
        metrics = table.optimize.compact(
            partition_filters=filters, target_size=target_bytes, writer_properties=WRITER_PROPERTIES
        )
        return {
            "files_removed": int(metrics.get("numFilesRemoved", 0)),
            "files_added": int(metrics.get("numFilesAdded", 0)),
            "seconds": round(time.perf_counter() - started, 4),
        }


# delta-rs hands Arrow to pyarrow through the C data interface, with string and binary views; the
# legacy stack pins pyarrow 14 (Petastorm needs its legacy Parquet dataset: docs/LEGACY.md), which
# imports neither the partition values of delta-rs's dataset nor views. Its reads go through
# delta-rs's SQL engine, each row as one struct of plain types.
ARROW_READS_DELTA_RS = int(pa.__version__.split(".")[0]) >= 15


def _plain_column(name: str, delta_type: Any) -> str:
    """SQL for column ``name`` cast from views to plain Arrow types (inside a struct the cast holds;
    at the top level delta-rs's query engine hands views out again)."""
    quoted = '"' + name.replace('"', '""') + '"'
    kind = getattr(delta_type, "type", None)
    element = getattr(getattr(delta_type, "element_type", None), "type", None)
    cast = {"string": "Utf8", "binary": "Binary"}.get(kind or "") or (
        {"string": "List(Utf8)", "binary": "List(Binary)"}.get(element or "") if kind == "array" else None
    )
    return f"arrow_cast({quoted}, '{cast}')" if cast else quoted


def read_through_sql(table: DeltaTable, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """``table``'s loaded version as Arrow without views or partition expressions (pyarrow before 15)."""
    from deltalake import QueryBuilder

    types = {field.name: field.type for field in table.schema().fields}
    wanted = list(columns or types)
    unknown = [c for c in wanted if c not in types]
    if unknown:
        raise LakeError(f"no columns {unknown} in {table.table_uri}")
    fields = ", ".join(f"'{name}', {_plain_column(name, types[name])}" for name in wanted)
    result = QueryBuilder().register("snapshot", table).execute(f"select named_struct({fields}) as row from snapshot")
    rows = pa.RecordBatchReader._import_from_c_capsule(result.__arrow_c_stream__()).read_all()
    structs = rows.column("row").combine_chunks()
    flat = pa.Table.from_arrays(structs.flatten(), names=wanted)
    return flat if filters is None else flat.filter(filters)


def _add_missing_columns(table: DeltaTable, spec: TableSpec) -> None:
    """Give a table made by an older lakesight the nullable columns its spec has gained since.

    Adding a column is a metadata-only commit that both engines read (no column mapping):
    e.g. ``images.embedding`` on a lake that predates embeddings. Old rows read it as null.
    """
    from deltalake.schema import Field as DeltaField

    present = {field.name for field in table.schema().fields}
    missing = [field for field in spec.schema if field.name not in present]
    if not missing:
        return
    log.info("adding columns %s to %s", ", ".join(f.name for f in missing), spec)
    try:
        table.alter.add_columns([DeltaField.from_arrow(field.with_nullable(True)) for field in missing])
    except Exception as exc:  # a concurrent writer may have added them first
        table.update_incremental()
        if not set(spec.schema.names) <= {f.name for f in table.schema().fields}:
            raise LakeError(f"cannot add columns to {spec}: {exc}") from exc


def partition_values(spec: TableSpec, source: pa.Table) -> dict[str, list[Any]]:
    """The values of each partition column that ``source`` touches."""
    return {column: pc.unique(source.column(column)).to_pylist() for column in spec.partition_by}


def pruned_predicate(spec: TableSpec, partitions: dict[str, list[Any]]) -> str:
    """Key equality, behind the list of partition values the batch touches (so others are pruned).

    The one MERGE predicate of both engines (``t`` the target, ``s`` the source).
    """
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in spec.keys)
    for column in spec.partition_by:
        literals = ", ".join(_sql_literal(v) for v in partitions.get(column, ()) if v is not None)
        if literals:
            predicate = f"t.{column} IN ({literals}) AND {predicate}"
    return predicate


def _already_committed(table: DeltaTable, txn: Transaction) -> bool:
    done = table.transaction_version(txn.app_id)
    return done is not None and done >= txn.version
