"""The always-on scoring stream: arrivals -> champion (and challenger) predictions -> ``images``, exactly once.

Executors read (or download) the images, check them and score them with the cached champion
(``streams.scoring.executor``); foreachBatch, on the driver (``streams.batch_writer``), hands unsure
images to labeling and MERGEs the batch into ``images`` keyed on path, recording ``(query id, batch
id)`` with the commit so a batch replayed after a crash changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infra.blob import STORAGE_UNAVAILABLE
from infra.errors import LakesightError
from infra.image_bytes import BYTES_REPLACED, keep_stored_rows, label_update_for_new_bytes
from infra.labeling import HandOff, hand_off
from infra.lake import MergeOutcome, Transaction, from_source
from infra.settings import Settings
from infra.spark import get_spark
from infra.spark_lake import open_lake
from infra.status import WAITING_FOR_STORAGE
from infra.tables import ARRIVAL_COLUMNS, IMAGES, PREDICTION_COLUMNS, SHADOW_COLUMNS, column_names
from streams.batch_writer import BatchTotals, Committed, ExactlyOnceWriter
from streams.checkpoint.rotation import remembers_every_file, remove_retired, retire_checkpoint, rotation_enabled
from streams.checkpoint.source_log import seen_file_count
from streams.file_rows import ARRIVAL_CHANGED
from streams.scoring.compaction import Compactor
from streams.scoring.drift import DriftMonitor
from streams.scoring.executor import MODEL_LOAD_ERROR, SCORED_DDL, executor_mapper, score_rows
from streams.scoring.progress import BatchRecord, ScoreStatus, make_listener
from streams.scoring.sources import IMAGE_GLOB, Source, arrivals_source, directory_source, file_rows
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


class ScoreError(LakesightError, RuntimeError):
    """The scoring stream cannot start (no champion, bad source)."""


@dataclass(frozen=True)
class BatchResult:
    batch_id: int
    table: pa.Table
    outcome: MergeOutcome
    committed_at: float  # time.time() right after the MERGE committed
    sent_to_labeling: int = 0


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
    stopped_by: str = "end of input"

    def add(self, batch: Committed, *, sent: int) -> None:
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


def _batch_record(batch: Committed, *, sent: int, compacted: dict[str, Any] | None) -> BatchRecord:
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


def resolve_source(settings: Settings, source: str | Path | None, glob: str = IMAGE_GLOB) -> Source:
    """A folder path -> directory source; None -> the arrival records folder."""
    from streams.scoring.sources import SourceError, clean_source_options

    try:
        src = directory_source(source, glob=glob) if source is not None else arrivals_source(settings)
        clean_source_options(settings, src)  # refuse a bad archive folder before Spark starts
        return src
    except SourceError as exc:
        raise ScoreError(str(exc)) from exc


def _require_champion(settings: Settings) -> None:
    from infra.registry import RegistryError, champion

    try:
        if champion(settings) is None:
            raise ScoreError(f"model {settings.model_name!r} has no champion yet: run 'lakesight train'")
    except RegistryError as exc:
        raise ScoreError(str(exc)) from exc


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, enabled: bool) -> Iterator[dict[str, str]]:
    """SIGTERM/SIGINT set ``stop`` (main thread only); the previous handlers come back afterwards."""
    received: dict[str, str] = {}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: Any) -> None:
        received["signal"] = signal.Signals(signum).name
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_gracefully(query: Any, grace_s: float, batch_done: threading.Event) -> None:
    """Stop between micro-batches: when none runs, or as soon as foreachBatch returns (up to
    ``grace_s``); a cut batch is replayed later, and skipped if it had committed.

    A stream that is falling behind starts each batch as the last ends, so waiting for an idle
    trigger alone could take the whole grace period and then cut a batch anyway.
    """
    batch_done.clear()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            if not query.status.get("isTriggerActive", False):
                break
        except Exception:  # noqa: BLE001 - the query may already be gone
            break
        if batch_done.wait(0.1):
            break
    query.stop()


def storage_outage(exc: BaseException) -> str | None:
    """The outage line of a query that failed because blob storage was unreachable, else None.

    The executor raised ``infra.blob.StorageUnavailable``; the driver sees it only as text inside
    Spark's StreamingQueryException, so the message's fixed start is what identifies it.
    """
    for line in str(exc).splitlines():
        start = line.find(STORAGE_UNAVAILABLE)
        if start >= 0:
            return line[start:].strip()[:500]
    return None


class ScoringQuery:
    """One scoring run over ``source``: the streaming query, restarted on a fresh checkpoint when due.

    Owns what the run's batches share: the lake (one handle, written only from foreachBatch's
    thread), the status file, the compactor, and how many files the current checkpoint has seen.
    """

    def __init__(
        self,
        settings: Settings,
        source: Source,
        *,
        once: bool = False,
        trigger_s: float | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
        on_start: Callable[[Any], None] | None = None,
        grace_s: float = 30.0,
    ):
        self.started = time.perf_counter()
        self.settings = settings
        self.source = source
        self.once = once
        self.on_batch = on_batch
        self.on_start = on_start
        self.grace_s = grace_s
        self.lake = open_lake(settings, reuse_tables=True)  # only foreachBatch's thread writes through it
        self.lake.images()
        self.spark = get_spark(settings, "lakesight-score")
        self.checkpoint = settings.checkpoint_uri(source.checkpoint)
        self.query_name = source.checkpoint.replace("-", "_")
        self.report = ScoreReport(source=f"{source.kind}:{source.location}")
        self.status = ScoreStatus(settings, source=self.report.source, query_name=self.query_name)
        self.compactor = Compactor(self.lake, settings.score_compact_every)
        self.rotates = rotation_enabled(settings, source, self.checkpoint)
        self.files_seen = 0  # by the current checkpoint
        self.storage_down_since: str | None = None  # ISO time of the first failed batch of an outage
        self.champion_load_error: str | None = None  # as the last batch's workers reported it
        self.drift = DriftMonitor(settings, self.lake)
        self.writer = ExactlyOnceWriter(
            self.lake,
            IMAGES,
            checkpoint=self.checkpoint,
            kind="score",
            totals=self.report,
            update=SCORE_UPDATE,
            when=SCORE_UPDATE_WHEN,
            unread_files=source.reads_files,
            dedupe=True,
            # The source log is read for the count only when it can trigger a rotation.
            on_listed=self._count_files if self.rotates else None,
            before_merge=self._hand_off,
            after_commit=self._committed,
            note_columns=(MODEL_LOAD_ERROR,),
            driver_content=lambda frame: labeling_content(settings, frame),
            staged_columns=("sent_to_labeling_at", "load_date"),
        )
        self._stream = self._stream_writer(trigger_s)
        self.folder = self._watched_folder()
        self._warn_if_unbounded()

    def _stream_writer(self, trigger_s: float | None) -> Any:
        settings = self.settings
        # The mapper is pickled for the executors: it holds neither ``self`` nor the secrets.
        scored = file_rows(self.spark, settings, self.source).mapInPandas(
            executor_mapper(score_rows, settings), SCORED_DDL
        )
        stream = (
            scored.writeStream.foreachBatch(self.writer)
            .option("checkpointLocation", self.checkpoint)
            .queryName(self.query_name)
        )
        if self.once:
            return stream.trigger(availableNow=True)
        return stream.trigger(processingTime=f"{trigger_s or settings.score_trigger_s} seconds")

    def _watched_folder(self) -> WatchedFolder | None:
        """A local folder source is looked at between batches: skipped files, changed error files."""
        if self.source.kind != "directory" or not WatchedFolder.watches(self.source.location):
            return None
        folder = WatchedFolder(
            self.source.location,
            self.source.glob,
            lake=self.lake,
            spark=self.spark,
            mapper=executor_mapper(score_rows, self.settings),
            ddl=SCORED_DDL,
            update=SCORE_UPDATE,
            when=SCORE_UPDATE_WHEN,
        )
        folder.load()
        return folder

    def _looked(self, found: FolderCheck | None) -> None:
        if found is None:
            return
        self.report.reread_files += found.reread_files
        self.status.update(skipped_files=found.skipped_files, reread_files_total=self.report.reread_files)

    def _warn_if_unbounded(self) -> None:
        if (
            not self.once
            and self.settings.score_clean_source == "off"
            and remembers_every_file(self.settings, self.source)
        ):
            log.warning(
                "Spark's file source keeps every file this query scores in memory (a week by default): "
                "set score_clean_source so the stream can start fresh checkpoints (docs/STREAMING.md, Memory)"
            )

    # Rotation -------------------------------------------------------------------------------------
    def _rotation_due(self) -> bool:
        return self.rotates and self.files_seen >= self.settings.score_checkpoint_max_files

    def _rotate_now(self) -> bool:
        return not self.once and self._rotation_due()  # a run-once pass finishes first; the next run rotates

    def _retire_if_full(self) -> None:
        remove_retired(self.checkpoint)
        self.files_seen = seen_file_count(self.checkpoint)
        if not self._rotation_due():
            return
        committed = self.lake.committed_version(IMAGES, self.writer.app_id())
        retired = retire_checkpoint(self.settings, self.checkpoint, committed, self.files_seen)
        self.status.update(last_checkpoint_retired={**retired, "at": time.time()})
        self.report.checkpoints_retired += 1
        self.files_seen = 0

    def _count_files(self, listed: int) -> None:
        self.files_seen += listed

    # foreachBatch ---------------------------------------------------------------------------------
    def _hand_off(self, table: pa.Table, txn: Transaction) -> HandOff:
        # First each path's stored load_date: one row per path, and the hand-off marks that row.
        table = keep_stored_rows(self.lake, table)
        return hand_off(self.settings, self.lake, table, app_id=txn.app_id, batch_id=txn.version)

    def _watch_drift(self, batch: Committed) -> None:
        """Feed the drift monitor; whatever it meets, the stream goes on (its reports are monitoring)."""
        try:
            report = self.drift.after_batch(batch.merged, app_id=self.writer.app_id(), batch_id=batch.batch_id)
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

    def _committed(self, batch: Committed) -> None:
        handed: HandOff = batch.staged
        compacted = self.compactor.after_batch(pc.unique(batch.merged.column("load_date")).to_pylist())
        self.report.add(batch, sent=handed.sent)
        if handed.fallback:
            self.status.update(labeling_fallback=handed.fallback)
        self._note_champion_load(batch.notes.get(MODEL_LOAD_ERROR))
        self._watch_drift(batch)
        if self.storage_down_since is not None:
            log.info("blob storage is reachable again (unreachable since %s)", self.storage_down_since)
            self.storage_down_since = None
            self.status.update(storage=None, storage_error=None)
        self.status.batch(_batch_record(batch, sent=handed.sent, compacted=compacted))
        if self.folder is not None:
            self._looked(self.folder.after_batch(batch.table))
        if self.on_batch is not None:
            self.on_batch(BatchResult(batch.batch_id, batch.table, batch.outcome, batch.committed_at, handed.sent))

    # The run --------------------------------------------------------------------------------------
    def _start(self) -> Any:
        if self.rotates:
            self._retire_if_full()
        if self.folder is not None:
            self._looked(self.folder.check())
        self.status.terminated.clear()  # set again when this query's last event has arrived
        query = self._stream.start()
        log.info("scoring %s (query %s, checkpoint %s)", self.report.source, query.id, self.checkpoint)
        if self.on_start is not None:
            self.on_start(query)
        return query

    def _await(self, query: Any, stop: threading.Event) -> None:
        """Until the query ends, a stop is asked for, or a fresh checkpoint is due; then stop it."""
        try:
            while query.isActive and not stop.is_set() and not self._rotate_now():
                query.awaitTermination(0.5)  # raises if the query failed
            if query.isActive:
                _stop_gracefully(query, self.grace_s, self.writer.batch_done)
            query.awaitTermination()
        finally:
            self.writer.release(query)

    def _wait_for_storage(self, outage: str, stop: threading.Event) -> None:
        """Record the outage in the status file, then wait before the failed batch is run again.

        Nothing of the failed batch was committed, so restarting the query from its checkpoint
        replays it; a run-once pass reports the outage instead of waiting for storage.
        """
        if self.once:
            raise ScoreError(f"{outage}; nothing of the batch was committed: run again once storage is back")
        self.status.terminated.wait(5)  # the listener's "failed" must not overwrite what follows
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.storage_down_since = self.storage_down_since or now
        self.report.storage_retries += 1
        wait_s = max(self.settings.blob_retry_s, 1.0)
        self.status.update(
            state=WAITING_FOR_STORAGE, storage=f"unreachable since {self.storage_down_since}", storage_error=outage
        )
        log.warning("%s; the batch is run again in %.0f s", outage, wait_s)
        stop.wait(wait_s)

    def _loop(self, stop: threading.Event, received: dict[str, str]) -> None:
        while True:
            query = self._start()
            try:
                self._await(query, stop)
                restart = self._rotate_now()
            except Exception as exc:
                outage = storage_outage(exc)
                if outage is None:
                    raise
                self._wait_for_storage(outage, stop)
                restart = True  # from the checkpoint: the failed batch runs again
            if stop.is_set():
                self.report.stopped_by = received.get("signal", "stop requested")
                return
            if not restart:
                return
            # The JVM frees a stopped query (with its memory of every file it saw) only once
            # py4j's wrapper is collected, and that wrapper sits in a reference cycle: without
            # this, every retired query stayed in the heap (jmap, and a 3-query experiment).
            del query
            gc.collect()

    def run(self, stop: threading.Event, *, handle_signals: bool = True) -> ScoreReport:
        """Score until the input ends (``once``), ``stop`` is set, or SIGTERM/SIGINT; return the report."""
        listener = make_listener(self.status, self.query_name)
        self.spark.streams.addListener(listener)
        try:
            with _stop_on_signals(stop, handle_signals) as received, self.status.heartbeat():
                self._loop(stop, received)
        finally:
            # Events are delivered asynchronously: let the last ones arrive before the callback goes away.
            self.status.terminated.wait(5)
            self.spark.streams.removeListener(listener)
        self.report.seconds = time.perf_counter() - self.started
        self.report.table_version = self.lake.version(IMAGES)
        self.status.update(state="stopped", stopped_by=self.report.stopped_by, report=self.report.as_dict())
        return self.report


def run_scoring(
    settings: Settings,
    *,
    source: str | Path | None = None,
    once: bool = False,
    stop_event: threading.Event | None = None,
    glob: str = IMAGE_GLOB,
    trigger_s: float | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    on_start: Callable[[Any], None] | None = None,
    handle_signals: bool = True,
    grace_s: float = 30.0,
) -> ScoreReport:
    """Score ``source`` (a folder; None: arrival records) until stopped, or once over what is there.

    Continuous by default (processing-time trigger); ``once`` runs an ``availableNow`` pass.
    Stops on ``stop_event`` or SIGTERM/SIGINT; a restart resumes from the checkpoint. When scored
    files leave the folder (``score_clean_source``), the query moves to a fresh checkpoint every
    ``score_checkpoint_max_files`` files (``streams.checkpoint.rotation``), which bounds Spark's memory.
    A batch that failed because blob storage was unreachable is run again every ``blob_retry_s``
    until storage answers (the status file says since when); a run-once pass raises :class:`ScoreError`.
    """
    src = resolve_source(settings, source, glob)
    _require_champion(settings)
    query = ScoringQuery(
        settings, src, once=once, trigger_s=trigger_s, on_batch=on_batch, on_start=on_start, grace_s=grace_s
    )
    return query.run(stop_event or threading.Event(), handle_signals=handle_signals)
