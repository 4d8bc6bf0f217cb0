"""The foreachBatch body shared by the ingest and the scoring stream: each micro-batch MERGEd exactly once.

A micro-batch is written with ``(app id, batch id)`` recorded in its Delta commit (the app id is the
query's, kept in the checkpoint: ``streams.checkpoint.names.query_app_id``), so a batch Spark replays
after a crash changes nothing. Read top-down, one batch is (:meth:`ExactlyOnceWriter._write`):

1. skip it if this query committed it already;
2. the lake engine holds it (:meth:`infra.lake.Lake.micro_batch`: on the driver for delta-rs, on
   the executors for delta-spark), and the job completes its rows (:meth:`BatchSteps.complete`);
3. rows for the files Spark listed but did not read; one row per path;
4. the job's :meth:`BatchSteps.stage` (the scoring stream's labeling hand-off);
5. the MERGE with the transaction;
6. the job's :meth:`BatchSteps.after_commit` (counters, status, compaction, drift).

What differs between the jobs is one :class:`BatchSteps` object each (``streams.ingest.IngestBatch``,
``streams.scoring.batch.ScoringBatch``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from infra.lake import Lake, MergeOutcome, Transaction
from infra.spark import CallbackConnections
from infra.tables import TableSpec
from streams.checkpoint.names import query_app_id
from streams.checkpoint.source_log import listed_files
from streams.file_rows import with_unread_files


class Staged(Protocol):
    """What a :meth:`BatchSteps.stage` step returns: at least the table to MERGE."""

    @property
    def table(self) -> pa.Table: ...


@dataclass(frozen=True)
class Committed:
    """One micro-batch the writer has MERGEd, handed to the job's :meth:`BatchSteps.after_commit`."""

    batch_id: int
    table: pa.Table  # as collected, with rows for unread files, duplicate keys collapsed
    merged: pa.Table  # what the MERGE was given (``staged.table``)
    staged: Any  # what the job's ``stage`` step returned
    outcome: MergeOutcome
    began: float  # time.perf_counter() before the micro-batch's Spark job ran
    collected: float  # time.perf_counter() once its rows were on the driver, completed (``BatchSteps.complete``)
    committed_at: float  # time.time() right after the MERGE committed
    notes: dict[str, str | None] = field(default_factory=dict)  # the ``note_columns``: first value of each
    app_id: str = ""  # the transaction's app id (the query's)
    completing_s: float = 0.0  # of began → collected, what ``BatchSteps.complete`` took

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


@dataclass(frozen=True)
class Unstaged:
    """The default :meth:`BatchSteps.stage`: the batch's table, MERGEd as it is."""

    table: pa.Table


class BatchSteps:
    """What one job does with its micro-batches around the writer's exactly-once MERGE.

    Class attributes say how the writer treats the batch; the methods are the job's steps, each
    a no-op here. ``kind`` names the job in the transaction app id; ``spec``, ``update`` and
    ``when`` are its MERGE (keys by spec, matched rows updated with ``update`` where ``when``).
    """

    kind: str
    spec: TableSpec
    update: dict[str, str] | None = None
    when: str | None = None
    # Skip a batch this query committed before its Spark job runs (where that job is costly: the
    # scoring stream reads and scores every image); otherwise the MERGE skips the replay.
    skip_committed: bool = True
    # Error rows for the files Spark's file source listed for the batch but did not read.
    unread_files: bool = False
    # One row per path (arrival records delivered twice).
    dedupe: bool = False
    # Executor columns carrying word for the driver (not table columns): their first non-null
    # value reaches ``after_commit`` in ``Committed.notes``.
    note_columns: tuple[str, ...] = ()
    # Columns ``stage`` sets on the driver's rows that the spark engine joins back to the
    # executors' rows by path before the MERGE.
    staged_columns: tuple[str, ...] = ()
    # Whether the writer reads the source log to report how many files each batch listed.
    counts_listed: bool = False

    def listed(self, files: int) -> None:
        """How many files Spark's file source listed for the batch (when ``counts_listed``)."""

    def driver_content(self, frame: Any) -> Any:
        """The spark engine's rows whose image bytes the driver needs (a Column), or None for none."""
        return None

    @property
    def completes_on_driver(self) -> bool:
        """Whether :meth:`complete` builds the rows to MERGE on the driver (the spark engine then
        MERGEs those instead of the executors' rows)."""
        return False

    def complete(self, table: pa.Table) -> pa.Table:
        """Right after collection: the rows the job MERGEs (the scoring stream's own processes score
        the listed files here, ``streams.scoring.pool``); by default the collected rows."""
        return table

    def stage(self, table: pa.Table, txn: Transaction) -> Staged:
        """Before the MERGE: what to MERGE instead of ``table``."""
        return Unstaged(table)

    def after_commit(self, batch: Committed) -> None:
        """After the commit: the job's bookkeeping (not called for an empty or skipped batch)."""


def _notes(table: pa.Table, columns: tuple[str, ...]) -> dict[str, str | None]:
    """The first non-null value of each of ``columns`` in ``table`` (None where all are null)."""
    notes: dict[str, str | None] = {}
    for name in columns:
        values = pc.drop_null(table.column(name)) if name in table.column_names else pa.array([], pa.string())
        notes[name] = values[0].as_py() if len(values) else None
    return notes


class ExactlyOnceWriter:
    """Callable as ``foreachBatch``: one job's micro-batches MERGEd into its table, each exactly once.

    ``steps`` is the job (:class:`BatchSteps`); ``totals`` its counters. Also closes the py4j
    connections foreachBatch ran on once the query stopped (``release``) and sets ``batch_done``
    whenever a call returns, so a stop can wait for the batch in flight.
    """

    def __init__(self, lake: Lake, steps: BatchSteps, *, checkpoint: str, totals: BatchTotals):
        self.lake = lake
        self.steps = steps
        self.checkpoint = checkpoint
        self.totals = totals
        self.batch_done = threading.Event()
        self._callbacks = CallbackConnections()

    def app_id(self) -> str:
        """The transaction app id of the checkpoint's current query."""
        return query_app_id(self.checkpoint, self.steps.kind)

    def __call__(self, batch: Any, batch_id: int) -> None:
        self._callbacks.record()
        try:
            self._write(batch, batch_id)
        finally:
            self.batch_done.set()

    def note_query_thread(self) -> None:
        """Call from the query listener's ``onQueryStarted``, which runs on the query's own thread: a
        query stopped before its first batch never calls foreachBatch, and its connection (opened for
        that event) was left open, one driver thread per such query."""
        self._callbacks.record()

    def release(self, query: Any) -> None:
        """Once ``query`` has stopped: close the connections its foreachBatch calls came in on."""
        self._callbacks.release(query)

    def _write(self, batch: Any, batch_id: int) -> None:
        steps = self.steps
        txn = Transaction(self.app_id(), batch_id)
        if steps.skip_committed and self._already_committed(txn):
            self.totals.skipped_batches += 1  # replayed after a crash: already in the table
            return
        began = time.perf_counter()
        rows = self.lake.micro_batch(
            batch, driver_content=steps.driver_content, completed_on_driver=steps.completes_on_driver
        )
        try:
            fetched = time.perf_counter()
            rows.extend_to(steps.complete(rows.table))
            collected = time.perf_counter()
            notes = _notes(rows.table, steps.note_columns)
            rows.extend_to(self._with_listed_files(rows.table, batch_id))
            if rows.table.num_rows == 0:
                return
            if steps.dedupe:
                rows.keep_latest_per_path()
            staged = steps.stage(rows.table, txn)
            outcome = rows.merge(
                steps.spec,
                staged.table,
                update=steps.update,
                when=steps.when,
                txn=txn,
                staged_columns=steps.staged_columns,
            )
            committed = Committed(
                batch_id,
                rows.table,
                staged.table,
                staged,
                outcome,
                began,
                collected,
                time.time(),
                notes,
                txn.app_id,
                completing_s=collected - fetched,
            )
        finally:
            rows.close()
        steps.after_commit(committed)

    def _already_committed(self, txn: Transaction) -> bool:
        done = self.lake.committed_version(self.steps.spec, txn.app_id)
        return done is not None and done >= txn.version

    def _with_listed_files(self, table: pa.Table, batch_id: int) -> pa.Table:
        if not self.steps.unread_files and not self.steps.counts_listed:
            return table  # the source log is read only for what needs it
        listed = listed_files(self.checkpoint, batch_id)
        if self.steps.counts_listed:
            self.steps.listed(len(listed))
        return with_unread_files(table, self.checkpoint, batch_id, listed) if self.steps.unread_files else table
