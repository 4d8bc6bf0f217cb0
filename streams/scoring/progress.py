"""Scoring-stream observability: a StreamingQueryListener plus a status file ``lakesight status`` reads.

The listener (driver side) sees Spark's progress events; foreachBatch adds what only it knows
(model version, MERGE time, errors, labeling). Both land in ``<run_dir>/score-status.json``,
rewritten atomically, with the last few batches kept (bounded, so the file never grows). Every
write stamps ``heartbeat_at``, and :meth:`ScoreStatus.heartbeat` keeps writing while the stream
runs, so a reader can tell a live stream from a file a killed one left behind (``infra.status_files``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from infra.settings import Settings
from infra.status_files import HEARTBEAT_EVERY_S, stream_status_path, write_status_file

log = logging.getLogger(__name__)

RECENT = 20
# Source metrics that mean "work not yet read" (Auto Loader, Kafka, Delta sources).
BACKLOG_METRICS = ("numFilesOutstanding", "numBytesOutstanding", "avgOffsetsBehindLatest", "numOffsetsBehindLatest")


@dataclass(frozen=True)
class BatchRecord:
    """What foreachBatch knows of one committed batch; written as is to the status file's
    ``last_batch`` and ``recent_batches`` (the status page and ``lakesight status`` read those keys)."""

    batch_id: int
    rows: int
    errors: int
    inserted: int
    updated: int
    sent_to_labeling: int
    model_version: str | None
    executors_s: float  # the micro-batch's Spark job: read, check, score (with ``pool_s``)
    pool_s: float | None  # of executors_s, the scoring in the stream's own processes (None: Spark's workers scored)
    driver_s: float  # from the rows on the driver to this record: hand-off, MERGE, compaction
    merge_s: float
    compact_s: float | None  # None: no compaction after this batch
    rows_per_s: float
    table_version: int | None
    committed_at: float  # time.time() right after the MERGE committed


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class ScoreStatus:
    """Thread-safe status of one scoring query, persisted on every change."""

    def __init__(self, settings: Settings, *, source: str, query_name: str):
        self.path = stream_status_path(settings)
        self.terminated = threading.Event()  # set by the listener: Spark delivered the last event
        self._lock = threading.Lock()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.state: dict[str, Any] = {
            "query": query_name,
            "source": source,
            "state": "starting",
            "pid": os.getpid(),
            "heartbeat_at": time.time(),
            "started_at": _now(),
            "updated_at": _now(),
            "model_name": settings.model_name,
            "model_version": None,
            "rows_total": 0,
            "errors_total": 0,
            "sent_to_labeling_total": 0,
            "last_progress": None,
            "last_batch": None,
            "recent_batches": [],
        }
        self.write()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.state.update(fields)
            self.state["updated_at"] = _now()
        self.write()

    def batch(self, record: BatchRecord) -> None:
        """Record a committed foreachBatch (rows, errors, model version, MERGE seconds)."""
        entry = asdict(record)
        with self._lock:
            self._recent.append(entry)
            self.state["last_batch"] = entry
            self.state["recent_batches"] = list(self._recent)
            self.state["rows_total"] += record.rows
            self.state["errors_total"] += record.errors
            self.state["sent_to_labeling_total"] += record.sent_to_labeling
            if record.model_version:
                self.state["model_version"] = record.model_version
            self.state["updated_at"] = _now()
        self.write()

    def write(self) -> None:
        # Under the lock up to the rename: with the heartbeat thread writing too, an older text
        # renamed after a newer one would undo it.
        with self._lock:
            self.state["heartbeat_at"] = time.time()
            write_status_file(self.path, self.state)

    @contextlib.contextmanager
    def heartbeat(self, every_s: float = HEARTBEAT_EVERY_S) -> Iterator[None]:
        """Rewrite the file every ``every_s`` while the block runs, also through long or idle
        batches (Spark sends no event then), so its ``heartbeat_at`` stays fresh while we live."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(every_s):
                try:
                    self.write()
                except OSError as exc:  # a full disk must not kill the stream; the next beat retries
                    log.warning("cannot write %s: %s", self.path, exc)

        thread = threading.Thread(target=beat, name="score-status-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=every_s + 1)


def progress_record(progress: Any) -> dict[str, Any]:
    """The figures lakesight reports from a ``StreamingQueryProgress``."""
    sources = list(getattr(progress, "sources", None) or [])
    backlog = None
    for source in sources:
        metrics = dict(getattr(source, "metrics", None) or {})
        for key in BACKLOG_METRICS:
            if key in metrics:
                backlog = {**(backlog or {}), key: metrics[key]}
    durations = dict(progress.durationMs or {})
    return {
        "batch_id": progress.batchId,
        "timestamp": progress.timestamp,
        "input_rows": progress.numInputRows,
        "input_rows_per_s": round(float(progress.inputRowsPerSecond or 0.0), 2),
        "processed_rows_per_s": round(float(progress.processedRowsPerSecond or 0.0), 2),
        "batch_duration_ms": progress.batchDuration,
        "trigger_ms": durations.get("triggerExecution"),
        "backlog": backlog,
    }


def make_listener(status: ScoreStatus, query_name: str, on_started: Callable[[], None] = lambda: None) -> Any:
    """A StreamingQueryListener writing ``query_name``'s progress to ``status`` and the log.

    ``on_started`` runs inside ``onQueryStarted``, which Spark delivers on the query's own thread
    before its first batch (the other events come on the listener bus's thread)."""
    from pyspark.sql.streaming import StreamingQueryListener

    class ScoreListener(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            if event.name == query_name:
                on_started()
                status.update(state="running", query_id=str(event.id), run_id=str(event.runId))

        def onQueryProgress(self, event: Any) -> None:
            progress = event.progress
            if progress.name != query_name:
                return
            record = progress_record(progress)
            record["model_version"] = status.state.get("model_version")
            status.update(last_progress=record)
            if record["input_rows"]:
                log.info(
                    "batch %s: %s rows, %.1f rows/s in, %.1f rows/s processed, %s ms, model %s",
                    record["batch_id"],
                    record["input_rows"],
                    record["input_rows_per_s"],
                    record["processed_rows_per_s"],
                    record["batch_duration_ms"],
                    record["model_version"],
                )

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            if str(event.id) == status.state.get("query_id"):
                status.update(state="failed" if event.exception else "stopped", error=event.exception)
                status.terminated.set()

    return ScoreListener()
