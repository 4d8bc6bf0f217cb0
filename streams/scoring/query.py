"""The always-on scoring stream: arrivals -> champion predictions -> ``images``, exactly once.

Executors read (or download) the images, check them and score them with the cached champion
(``streams.scoring.executor``); foreachBatch, on the driver, hands unsure images to labeling and MERGEs
the batch into ``images`` keyed on path, recording ``(query id, batch id)`` with the commit so a
batch replayed after a crash changes nothing.
"""

from __future__ import annotations

import contextlib
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

from infra.errors import LakesightError
from infra.lake import Lake, MergeOutcome, Transaction, from_source
from infra.settings import Settings
from infra.spark import CallbackConnections, get_spark
from infra.tables import ARRIVAL_COLUMNS, IMAGES, PREDICTION_COLUMNS, column_names
from streams.checkpoint.names import query_app_id
from streams.checkpoint.rotation import remembers_every_file, remove_retired, retire_checkpoint, rotation_enabled
from streams.checkpoint.source_log import listed_files, seen_file_count
from streams.file_rows import with_unread_files
from streams.scoring.executor import SCORED_DDL, score_rows
from streams.scoring.labeling import hand_off
from streams.scoring.progress import ScoreStatus, make_listener
from streams.scoring.sources import IMAGE_GLOB, Source, arrivals_source, directory_source, file_rows

log = logging.getLogger("lakesight.score")

# Matched rows: predictions always follow the latest scoring; a sent_to_labeling_at once set
# stays; label columns are never named, so a human label cannot be overwritten.
_UPDATE_PREDICTION = {
    **from_source(c for c in column_names(PREDICTION_COLUMNS) if c != "sent_to_labeling_at"),
    "sent_to_labeling_at": "COALESCE(t.sent_to_labeling_at, s.sent_to_labeling_at)",
}
# Arrival columns change only when the bytes did (a rewritten file); the error follows the scoring.
_UPDATE_ARRIVAL = {
    c: f"CASE WHEN (s.content_hash IS DISTINCT FROM t.content_hash) THEN s.{c} ELSE t.{c} END"
    for c in column_names(ARRIVAL_COLUMNS)
    if c not in ("path", "load_date", "error")
}
SCORE_UPDATE = {**_UPDATE_ARRIVAL, **_UPDATE_PREDICTION, "error": "s.error"}
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


@dataclass
class ScoreReport:
    source: str
    batches: int = 0
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    errors: int = 0
    skipped_batches: int = 0
    sent_to_labeling: int = 0
    checkpoints_retired: int = 0
    model_versions: Counter[str] = field(default_factory=Counter)
    merge_seconds_total: float = 0.0  # a sum, not a list: an always-on stream runs ~86,000 batches a day
    seconds: float = 0.0
    stopped_by: str = "end of input"
    table_version: int | None = None

    def as_dict(self) -> dict[str, object]:
        out = dict(self.__dict__)
        out["model_versions"] = dict(self.model_versions)
        out["merge_seconds_mean"] = self.merge_seconds_mean
        return out

    @property
    def merge_seconds_mean(self) -> float | None:
        return round(self.merge_seconds_total / self.batches, 4) if self.batches else None


def dedupe_paths(table: pa.Table) -> pa.Table:
    """Keep the last row per path: a MERGE source must not name one target row twice."""
    if table.num_rows < 2 or pc.count_distinct(table.column("path")).as_py() == table.num_rows:
        return table
    indexed = table.append_column("__row", pa.array(range(table.num_rows), type=pa.int64()))
    last = indexed.group_by("path").aggregate([("__row", "max")]).column("__row_max")
    return table.take(pa.array(sorted(last.to_pylist()), type=pa.int64()))


def _count_errors(table: pa.Table) -> int:
    return int(pc.sum(pc.is_valid(table.column("error"))).as_py() or 0)


def _model_version(table: pa.Table) -> str | None:
    versions = [v for v in pc.unique(table.column("model_version")).to_pylist() if v is not None]
    return max(versions, key=lambda v: (len(v), v)) if versions else None


class Compactor:
    """Compacts the ``images`` partitions the stream wrote, every ``every`` batches.

    Each batch's MERGE adds a file, and the next MERGE scans every file of its partitions
    (measured here: 0.06 s per batch with 10 files in today's partition, 0.76 s with 1,000).
    A compaction that loses to a concurrent writer (a label MERGE) is retried after the next batch.
    Files reach at most ``TARGET_BYTES``: compaction then leaves them alone instead of rewriting
    the day's one growing file every time (measured: 24 MB rewritten every 50 batches after 20
    minutes at 100 images/s), and a row update rewrites at most that much.
    """

    TARGET_BYTES = 16 * 2**20

    def __init__(self, lake: Lake, every: int):
        self.lake = lake
        self.every = every
        self.dates: set[Any] = set()
        self.batches = 0

    def after_batch(self, load_dates: list[Any]) -> dict[str, Any] | None:
        if self.every <= 0:
            return None
        self.dates.update(d for d in load_dates if d is not None)
        self.batches += 1
        if self.batches < self.every or not self.dates:
            return None
        try:
            figures = self.lake.compact(IMAGES, "load_date", self.dates, target_bytes=self.TARGET_BYTES)
        except Exception as exc:  # noqa: BLE001 - never fatal: the next batch tries again
            log.warning("compacting %s failed (will retry): %s", IMAGES, exc)
            return None
        log.info("compacted %s partitions %s: %s", IMAGES, sorted(map(str, self.dates)), figures)
        self.dates.clear()
        self.batches = 0
        return figures


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


def run_scoring(  # noqa: C901 - to become ScoringQuery (docs/ARCHITECTURE.md, "Still open")
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
    """
    src = resolve_source(settings, source, glob)
    _require_champion(settings)
    started = time.perf_counter()
    lake = Lake(settings, reuse_tables=True)  # only foreachBatch's thread writes through it
    lake.images()
    spark = get_spark(settings, "lakesight-score")
    checkpoint = settings.checkpoint_uri(src.checkpoint)
    query_name = src.checkpoint.replace("-", "_")
    report = ScoreReport(source=f"{src.kind}:{src.location}")
    status = ScoreStatus(settings, source=report.source, query_name=query_name)
    stop = stop_event or threading.Event()

    scored = file_rows(spark, settings, src).mapInPandas(lambda it: score_rows(it, settings=settings), SCORED_DDL)
    compactor = Compactor(lake, settings.score_compact_every)
    rotates = rotation_enabled(settings, src, checkpoint)
    if not once and settings.score_clean_source == "off" and remembers_every_file(settings, src):
        log.warning(
            "Spark's file source keeps every file this query scores in memory (a week by default): "
            "set score_clean_source so the stream can start fresh checkpoints (docs/STREAMING.md, Memory)"
        )
    files_seen = [0]  # by the current checkpoint

    def rotation_due() -> bool:
        return rotates and files_seen[0] >= settings.score_checkpoint_max_files

    def rotate_now() -> bool:
        return not once and rotation_due()  # a run-once pass finishes first; the next run rotates

    def start_query() -> Any:
        if rotates:
            remove_retired(checkpoint)
            files_seen[0] = seen_file_count(checkpoint)
            if rotation_due():
                committed = lake.committed_version(IMAGES, query_app_id(checkpoint, "score"))
                retired = retire_checkpoint(settings, checkpoint, committed, files_seen[0])
                status.update(last_checkpoint_retired={**retired, "at": time.time()})
                report.checkpoints_retired += 1
                files_seen[0] = 0
        status.terminated.clear()  # set again when this query's last event has arrived
        query = writer.start()
        log.info("scoring %s (query %s, checkpoint %s)", report.source, query.id, checkpoint)
        if on_start is not None:
            on_start(query)
        return query

    batch_done = threading.Event()
    callbacks = CallbackConnections()

    def write_batch(batch: Any, batch_id: int) -> None:
        callbacks.record()
        try:
            commit_batch(batch, batch_id)
        finally:
            batch_done.set()

    def commit_batch(batch: Any, batch_id: int) -> None:
        app_id = query_app_id(checkpoint, "score")
        done = lake.committed_version(IMAGES, app_id)
        if done is not None and done >= batch_id:
            report.skipped_batches += 1  # replayed after a crash: already in the table
            return
        began = time.perf_counter()
        table = batch.toArrow()  # runs the micro-batch's Spark job: read, check, score on executors
        collected = time.perf_counter()
        listed = listed_files(checkpoint, batch_id) if rotates or src.reads_files else {}
        files_seen[0] += len(listed)
        if src.reads_files:
            table = with_unread_files(table, checkpoint, batch_id, listed)
        if table.num_rows == 0:
            return
        table = dedupe_paths(table)
        handed = hand_off(settings, lake, table, app_id=app_id, batch_id=batch_id)
        outcome = lake.merge(
            IMAGES, handed.table, update=SCORE_UPDATE, when=SCORE_UPDATE_WHEN, txn=Transaction(app_id, batch_id)
        )
        committed_at = time.time()
        compacted = compactor.after_batch(pc.unique(handed.table.column("load_date")).to_pylist())
        errors = _count_errors(table)
        version = _model_version(table)
        report.batches += 1
        report.rows += table.num_rows
        report.errors += errors
        report.inserted += outcome.inserted
        report.updated += outcome.updated
        report.sent_to_labeling += handed.sent
        report.skipped_batches += int(outcome.skipped)
        report.merge_seconds_total += outcome.seconds
        for value, count in Counter(table.column("model_version").to_pylist()).items():
            if value is not None:
                report.model_versions[value] += count
        status.batch(
            {
                "batch_id": batch_id,
                "rows": table.num_rows,
                "errors": errors,
                "inserted": outcome.inserted,
                "updated": outcome.updated,
                "sent_to_labeling": handed.sent,
                "model_version": version,
                "executors_s": round(collected - began, 4),
                "driver_s": round(time.perf_counter() - collected, 4),
                "merge_s": round(outcome.seconds, 4),
                "compact_s": compacted.get("seconds") if compacted else None,
                "rows_per_s": round(table.num_rows / max(time.perf_counter() - began, 1e-6), 1),
                "table_version": outcome.version,
                "committed_at": committed_at,
            }
        )
        if on_batch is not None:
            on_batch(BatchResult(batch_id, table, outcome, committed_at, handed.sent))

    listener = make_listener(status, query_name)
    spark.streams.addListener(listener)
    writer = scored.writeStream.foreachBatch(write_batch).option("checkpointLocation", checkpoint).queryName(query_name)
    interval = f"{trigger_s or settings.score_trigger_s} seconds"
    writer = writer.trigger(availableNow=True) if once else writer.trigger(processingTime=interval)
    try:
        with _stop_on_signals(stop, handle_signals) as received:
            while True:
                query = start_query()
                try:
                    while query.isActive and not stop.is_set() and not rotate_now():
                        query.awaitTermination(0.5)  # raises if the query failed
                    if query.isActive:
                        _stop_gracefully(query, grace_s, batch_done)
                    query.awaitTermination()
                finally:
                    callbacks.release(query)
                if stop.is_set():
                    report.stopped_by = received.get("signal", "stop requested")
                if stop.is_set() or not rotate_now():
                    break
                # The JVM frees a stopped query (with its memory of every file it saw) only once
                # py4j's wrapper is collected, and that wrapper sits in a reference cycle: without
                # this, every retired query stayed in the heap (jmap, and a 3-query experiment).
                del query
                gc.collect()
    finally:
        # Events are delivered asynchronously: let the last ones arrive before the callback goes away.
        status.terminated.wait(5)
        spark.streams.removeListener(listener)
    report.seconds = time.perf_counter() - started
    report.table_version = lake.version(IMAGES)
    status.update(state="stopped", stopped_by=report.stopped_by, report=report.as_dict())
    return report
