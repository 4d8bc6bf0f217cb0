"""The inference table: answered images appended to ``online_predictions`` off the request path.

Requests put rows on a bounded queue and return; one thread writes them in batches. When the
queue is full (the table is slower than the traffic) the response still goes out and the row is
dropped and counted, so a slow lake never slows or fails a request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import pyarrow as pa

from infra.lake import Lake
from infra.settings import Settings
from infra.tables import ONLINE_PREDICTIONS

log = logging.getLogger(__name__)

FLUSH_ROWS = 5000
FLUSH_SECONDS = 1.0


class InferenceLog:
    def __init__(self, settings: Settings, *, flush_s: float = FLUSH_SECONDS) -> None:
        self._lake = Lake(settings)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=settings.online_log_queue)
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lakesight-inference-log", daemon=True)
        self.written = 0
        self.dropped = 0
        self.failed_writes = 0

    def start(self) -> None:
        self._thread.start()

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Queue ``rows`` (ONLINE_PREDICTIONS columns); never blocks."""
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self.dropped += 1

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            rows = self._take()
            if rows:
                self._write(rows)

    def _take(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + self._flush_s
        while len(rows) < FLUSH_ROWS:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._stop.is_set() and self._queue.empty()):
                break
            try:
                rows.append(self._queue.get(timeout=min(remaining, 0.1)))
            except queue.Empty:
                continue
        return rows

    def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            self._lake.merge(ONLINE_PREDICTIONS, pa.Table.from_pylist(rows, schema=ONLINE_PREDICTIONS.schema))
        except Exception as exc:  # noqa: BLE001 - the table is best effort; serving goes on
            self.failed_writes += 1
            self.dropped += len(rows)
            log.warning("could not write %d rows to %s: %s", len(rows), ONLINE_PREDICTIONS, exc)
            return
        self.written += len(rows)
