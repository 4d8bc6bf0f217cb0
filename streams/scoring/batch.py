"""The scoring stream's micro-batch, read top-down: hand unsure images to labeling, MERGE, then keep count.

:class:`ScoringBatch` is the stream's :class:`~streams.batch_writer.BatchSteps`: the writer collects
the batch and MERGEs it exactly once into ``images`` with these rules; before the MERGE the labeling
hand-off runs in the batch's transaction; after it the counters, compaction, the drift monitor, the
status file and the watched folder. The query's life (start, stop, rotation, storage outages) is
``streams.scoring.query``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infra.core.labeling import HandOff, hand_off
from infra.image_bytes import BYTES_REPLACED, keep_stored_rows, label_update_for_new_bytes
from infra.lake import Lake, MergeOutcome, Transaction, from_source
from infra.settings import Settings
from infra.tables import ARRIVAL_COLUMNS, IMAGES, PREDICTION_COLUMNS, SHADOW_COLUMNS, column_names
from streams.batch_writer import BatchSteps, BatchTotals, Committed
from streams.file_rows import ARRIVAL_CHANGED
from streams.scoring.compaction import Compactor
from streams.scoring.drift import DriftMonitor
from streams.scoring.executor import MODEL_LOAD_ERROR
from streams.scoring.pooled import PooledScoring
from streams.scoring.progress import BatchRecord, ScoreStatus
from streams.watched_folder import FolderCheck, WatchedFolder

log = logging.getLogger(__name__)

# Matched rows: predictions always follow the latest scoring; a sent_to_labeling_at once set
# stays while the bytes do (new bytes may be sent again); a human label is never overwritten,
# only cleared when the bytes it was given for are replaced (infra.image_bytes).
_UPDATE_PREDICTION = {
    **from_source(c for c in column_names(PREDICTION_COLUMNS) if c != "sent_to_labeling_at"),
    "sent_to_labeling_at": (
        f"CASE WHEN {BYTES_REPLACED} THEN s.sent_to_labeling_at "
        "ELSE COALESCE(t.sent_to_labeling_at, s.sent_to_labeling_at) END"
    ),
}
# Arrival columns change only when the file did (a rewritten file, or an error row's file that
# changed since); the error follows the scoring.
_UPDATE_ARRIVAL = {
    c: f"CASE WHEN {ARRIVAL_CHANGED} THEN s.{c} ELSE t.{c} END"
    for c in column_names(ARRIVAL_COLUMNS)
    if c not in ("path", "load_date", "error")
}
# The challenger's answer follows the latest scoring too: a row scored again without a challenger
# (promoted, refused) loses it, as its prediction changed (docs/PROMOTION.md).
SCORE_UPDATE = {
    **_UPDATE_ARRIVAL,
    **_UPDATE_PREDICTION,
    **from_source(column_names(SHADOW_COLUMNS)),
    **label_update_for_new_bytes(),
    "error": "s.error",
}
# A fetch that got no bytes (vanished blob) never wipes a row that has them.
SCORE_UPDATE_WHEN = "(s.content_hash IS NOT NULL) OR (t.content_hash IS NULL)"


@dataclass(frozen=True)
class BatchResult:
    batch_id: int
    table: pa.Table
    outcome: MergeOutcome
    committed_at: float  # time.time() right after the MERGE committed
    sent_to_labeling: int = 0
    record: BatchRecord | None = None  # where the batch's time went (executors, driver, MERGE)


@dataclass(kw_only=True)
class ScoreReport(BatchTotals):
    source: str
    rows: int = 0
    sent_to_labeling: int = 0
    checkpoints_retired: int = 0
    reread_files: int = 0  # error rows of a local folder whose file changed, read again
    model_versions: Counter[str] = field(default_factory=Counter)
    merge_seconds_total: float = 0.0  # a sum, not a list: an always-on stream runs ~86,000 batches a day
    storage_retries: int = 0  # batches that failed on unreachable blob storage and were run again
    read_ahead_rows: int = 0  # rows the pool scored ahead of their batch (streams.scoring.read_ahead)
    read_ahead_hits: int = 0  # of those, rows a batch then listed and took
    stopped_by: str = "end of input"

    def count(self, batch: Committed, *, sent: int) -> None:
        """Count one MERGEd batch: its rows, labeling sends, MERGE time and the versions that scored it."""
        super().add(batch)
        self.rows += batch.table.num_rows
        self.sent_to_labeling += sent
        self.merge_seconds_total += batch.outcome.seconds
        for value, count in Counter(batch.table.column("model_version").to_pylist()).items():
            if value is not None:
                self.model_versions[value] += count

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "merge_seconds_mean": self.merge_seconds_mean}

    @property
    def merge_seconds_mean(self) -> float | None:
        return round(self.merge_seconds_total / self.batches, 4) if self.batches else None


def _model_version(table: pa.Table) -> str | None:
    versions = [v for v in pc.unique(table.column("model_version")).to_pylist() if v is not None]
    return max(versions, key=lambda v: (len(v), v)) if versions else None


def _batch_record(batch: Committed, *, sent: int, compacted: dict[str, Any] | None, pooled: bool) -> BatchRecord:
    now = time.perf_counter()
    rows = batch.table.num_rows
    return BatchRecord(
        batch_id=batch.batch_id,
        rows=rows,
        errors=batch.errors,
        inserted=batch.outcome.inserted,
        updated=batch.outcome.updated,
        sent_to_labeling=sent,
        model_version=_model_version(batch.table),
        executors_s=round(batch.collected - batch.began, 4),
        pool_s=round(batch.completing_s, 4) if pooled else None,
        driver_s=round(now - batch.collected, 4),
        merge_s=round(batch.outcome.seconds, 4),
        compact_s=compacted.get("seconds") if compacted else None,
        rows_per_s=round(rows / max(now - batch.began, 1e-6), 1),
        table_version=batch.outcome.version,
        committed_at=batch.committed_at,
    )


def labeling_content(settings: Settings, frame: Any) -> Any:
    """The rows whose image bytes the driver needs with the spark engine: those the labeling hand-off
    may send (scored, readable, unsure); every other image stays on the executors."""
    from pyspark.sql import functions as F

    if settings.labeling_fraction <= 0 or settings.labeling_daily_budget <= 0:
        return F.lit(False)
    return (
        F.col("error").isNull()
        & F.col("probabilities").isNotNull()
        & (F.col("confidence") < F.lit(settings.confidence_threshold))
    )


class ScoringBatch(BatchSteps):
    """What the scoring stream does with each micro-batch (the writer does the exactly-once MERGE)."""

    kind = "score"
    spec = IMAGES
    update = SCORE_UPDATE
    when = SCORE_UPDATE_WHEN
    dedupe = True
    note_columns = (MODEL_LOAD_ERROR,)
    # The hand-off's marks, and each path's stored load_date (one row per path whatever the day).
    staged_columns = ("sent_to_labeling_at", "load_date")

    def __init__(
        self,
        settings: Settings,
        lake: Lake,
        *,
        report: ScoreReport,
        status: ScoreStatus,
        reads_files: bool,
        counts_listed: bool,
        folder: WatchedFolder | None,
        on_batch: Callable[[BatchResult], None] | None,
        pool: PooledScoring | None = None,
    ):
        self.settings = settings
        self.pool = pool  # scores the listed files on the driver (None: the executors scored them)
        self.lake = lake
        self.report = report
        self.status = status
        self.unread_files = reads_files
        self.counts_listed = counts_listed  # the source log is read for the count only when it can rotate
        self.folder = folder
        self.on_batch = on_batch
        self.compactor = Compactor(lake, settings.score_compact_every)
        self.drift = DriftMonitor(settings, lake)
        self.files_seen = 0  # by the current checkpoint
        self.storage_down_since: str | None = None  # ISO time of the first failed batch of an outage
        self.champion_load_error: str | None = None  # as the last batch's workers reported it

    def listed(self, files: int) -> None:
        self.files_seen += files

    def driver_content(self, frame: Any) -> Any:
        return labeling_content(self.settings, frame)

    @property
    def completes_on_driver(self) -> bool:
        return self.pool is not None

    def complete(self, table: pa.Table) -> pa.Table:
        return table if self.pool is None else self.pool.score(table)

    def stage(self, table: pa.Table, txn: Transaction) -> HandOff:
        """Each path under the load_date its row already has (one row per path, whatever the day),
        then the labeling hand-off: unsure images chosen, copied, recorded in the ledger (same transaction)."""
        table = keep_stored_rows(self.lake, table)
        return hand_off(self.settings, self.lake, table, app_id=txn.app_id, batch_id=txn.version)

    def _watch_drift(self, batch: Committed) -> None:
        """Feed the drift monitor; whatever it meets, the stream goes on (its reports are monitoring)."""
        try:
            report = self.drift.after_batch(batch.merged, app_id=batch.app_id, batch_id=batch.batch_id)
        except Exception as exc:  # noqa: BLE001 - a failed drift check must not fail a committed batch
            log.warning("drift monitor failed on batch %d: %s", batch.batch_id, exc)
            return
        if report is not None:
            self.status.update(last_drift=self.drift.last)

    def _note_champion_load(self, error: str | None) -> None:
        """Show a champion the workers could not load until a batch is scored without that error."""
        if error == self.champion_load_error:
            return
        if error:
            log.warning("the scoring workers did not load the champion: %s", error)
        else:
            log.info("the scoring workers serve the champion the alias names again")
        self.champion_load_error = error
        self.status.update(champion_load_error=error)

    def after_commit(self, batch: Committed) -> None:
        """Counters, compaction, drift, the status file, the watched folder, the caller's ``on_batch``."""
        handed: HandOff = batch.staged
        compacted = self.compactor.after_batch(pc.unique(batch.merged.column("load_date")).to_pylist())
        self.report.count(batch, sent=handed.sent)
        if handed.fallback:
            self.status.update(labeling_fallback=handed.fallback)
        self._note_champion_load(batch.notes.get(MODEL_LOAD_ERROR))
        self._watch_drift(batch)
        if self.storage_down_since is not None:
            log.info("blob storage is reachable again (unreachable since %s)", self.storage_down_since)
            self.storage_down_since = None
            self.status.update(storage=None, storage_error=None)
        record = _batch_record(batch, sent=handed.sent, compacted=compacted, pooled=self.pool is not None)
        self.status.batch(record)
        if self.folder is not None:
            self.note_folder(self.folder.after_batch(batch.table))
        if self.on_batch is not None:
            self.on_batch(
                BatchResult(batch.batch_id, batch.table, batch.outcome, batch.committed_at, handed.sent, record)
            )

    def note_folder(self, found: FolderCheck | None) -> None:
        """What a look at the watched folder found: skipped files, error files read again."""
        if found is None:
            return
        self.report.reread_files += found.reread_files
        self.status.update(skipped_files=found.skipped_files, reread_files_total=self.report.reread_files)
