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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from infra.blob import STORAGE_UNAVAILABLE
from infra.errors import LakesightError
from infra.lake import open_lake
from infra.locations import local_path
from infra.settings import Settings
from infra.spark import get_spark
from infra.status_files import WAITING_FOR_STORAGE
from infra.tables import IMAGES
from streams.batch_writer import ExactlyOnceWriter
from streams.checkpoint.rotation import remembers_every_file, remove_retired, retire_checkpoint, rotation_enabled
from streams.checkpoint.source_log import seen_file_count
from streams.scoring.batch import SCORE_UPDATE, SCORE_UPDATE_WHEN, BatchResult, ScoreReport, ScoringBatch
from streams.scoring.executor import SCORED_DDL, executor_mapper, score_rows
from streams.scoring.pool import ScoringPoolError, uses_pool
from streams.scoring.pooled import PooledScoring
from streams.scoring.progress import ScoreStatus, make_listener
from streams.scoring.sources import IMAGE_GLOB, Source, arrivals_source, directory_source, file_count_limit, file_rows
from streams.scoring.warm import WorkerWarmer
from streams.watched_folder import WatchedFolder, typical_file_bytes

log = logging.getLogger(__name__)


class ScoreError(LakesightError, RuntimeError):
    """The scoring stream cannot start (no champion, bad source)."""


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
    from infra.registry import RegistryError, champion_version

    try:
        if champion_version(settings) is None:
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
        self.on_start = on_start
        self.grace_s = grace_s
        self.lake = open_lake(settings, reuse_tables=True)  # only foreachBatch's thread writes through it
        self.lake.images()
        self.spark = get_spark(settings, "lakesight-score")
        self.lake.prepare(IMAGES)  # while the query starts (the spark engine's first MERGE)
        self.checkpoint = settings.checkpoint_uri(source.checkpoint)
        self.query_name = source.checkpoint.replace("-", "_")
        self.report = ScoreReport(source=f"{source.kind}:{source.location}")
        self.status = ScoreStatus(settings, source=self.report.source, query_name=self.query_name)
        self.rotates = rotation_enabled(settings, source, self.checkpoint)
        self.pooled = self._pool_wanted()
        self.batch = ScoringBatch(
            settings,
            self.lake,
            report=self.report,
            status=self.status,
            reads_files=source.reads_files,
            counts_listed=self.rotates,
            folder=self._watched_folder(),
            on_batch=on_batch,
        )
        self.writer = ExactlyOnceWriter(self.lake, self.batch, checkpoint=self.checkpoint, totals=self.report)
        # The pool's processes never idle out; Spark's Python workers do, after a minute.
        self.warmer = WorkerWarmer(self.spark, settings, enabled=not once and not self.pooled)
        self._batches_seen = 0
        self._stream = self._stream_writer(trigger_s)
        self._warn_if_unbounded()
        # Last, so that nothing above can fail with its processes started.
        self.pool = self._scoring_pool() if self.pooled else None
        self.batch.pool = self.pool

    def _pool_wanted(self) -> bool:
        """Whether ``score_workers`` puts the scoring in the stream's own processes (``streams.scoring.pool``)."""
        try:
            return uses_pool(self.settings, self.source.kind, self.source.location)
        except ScoringPoolError as exc:
            raise ScoreError(str(exc)) from exc

    def _scoring_pool(self) -> PooledScoring:
        folder = str(local_path(self.source.location))
        limit = file_count_limit(self.settings, typical_file_bytes(folder, self.source.glob))
        scoring = PooledScoring.start(self.settings, self.spark, folder=folder, glob=self.source.glob, file_limit=limit)
        log.info(
            "scoring in %d processes of the stream's own (score_workers=%s)",
            scoring.pool.processes,
            self.settings.score_workers,
        )
        return scoring

    def _stream_writer(self, trigger_s: float | None) -> Any:
        settings = self.settings
        scored = file_rows(self.spark, settings, self.source)
        if not self.pooled:
            # The mapper is pickled for the executors: it holds neither ``self`` nor the secrets.
            scored = scored.mapInPandas(executor_mapper(score_rows, settings), SCORED_DDL)
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
        return self.rotates and self.batch.files_seen >= self.settings.score_checkpoint_max_files

    def _rotate_now(self) -> bool:
        return not self.once and self._rotation_due()  # a run-once pass finishes first; the next run rotates

    def _retire_if_full(self) -> None:
        remove_retired(self.checkpoint)
        self.batch.files_seen = seen_file_count(self.checkpoint)
        if not self._rotation_due():
            return
        committed = self.lake.committed_version(IMAGES, self.writer.app_id())
        retired = retire_checkpoint(self.settings, self.checkpoint, committed, self.batch.files_seen)
        self.status.update(last_checkpoint_retired={**retired, "at": time.time()})
        self.report.checkpoints_retired += 1
        self.batch.files_seen = 0

    # The run --------------------------------------------------------------------------------------
    def _start(self) -> Any:
        if self.rotates:
            self._retire_if_full()
        if self.batch.folder is not None:
            self.batch.note_folder(self.batch.folder.check())
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
                self._keep_warm(query)
            if query.isActive:
                _stop_gracefully(query, self.grace_s, self.writer.batch_done)
            query.awaitTermination()
        finally:
            self.writer.release(query)

    def _keep_warm(self, query: Any) -> None:
        """Between batches: the workers' idle clock restarts at each batch; a long lull gets the warm-up job."""
        if self.report.batches != self._batches_seen:
            self._batches_seen = self.report.batches
            self.warmer.note_batch()
        elif self.warmer.due() and not query.status["isTriggerActive"]:
            self.warmer.warm()

    def _wait_for_storage(self, outage: str, stop: threading.Event) -> None:
        """Record the outage in the status file, then wait before the failed batch is run again.

        Nothing of the failed batch was committed, so restarting the query from its checkpoint
        replays it; a run-once pass reports the outage instead of waiting for storage.
        """
        if self.once:
            raise ScoreError(f"{outage}; nothing of the batch was committed: run again once storage is back")
        self.status.terminated.wait(5)  # the listener's "failed" must not overwrite what follows
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.batch.storage_down_since = self.batch.storage_down_since or now
        self.report.storage_retries += 1
        wait_s = max(self.settings.blob_retry_s, 1.0)
        self.status.update(
            state=WAITING_FOR_STORAGE,
            storage=f"unreachable since {self.batch.storage_down_since}",
            storage_error=outage,
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
        listener = make_listener(self.status, self.query_name, on_started=self.writer.note_query_thread)
        self.spark.streams.addListener(listener)
        try:
            with _stop_on_signals(stop, handle_signals) as received, self.status.heartbeat():
                self._loop(stop, received)
        finally:
            # Events are delivered asynchronously: let the last ones arrive before the callback goes away.
            self.status.terminated.wait(5)
            self.spark.streams.removeListener(listener)
            if self.pool is not None:
                self.pool.close()
                self.report.read_ahead_hits = self.pool.cache.hits
                self.report.read_ahead_rows = self.pool.read_ahead_rows
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
