"""The inference table: answered images appended to ``online_predictions`` off the request path.

Requests put rows on a bounded queue and return; one thread writes them in batches. When the
queue is full (the table is slower than the traffic) the response still goes out and the row is
dropped and counted, so a slow lake never slows or fails a request.

With ``LAKESIGHT_ONLINE_TO_LABELING`` the same thread hands unsure images to labeling through
``infra.core.labeling`` (the stream's hand-off, ledger and daily budget) and adds them to ``images`` as
``online:<request id>/<item>``, so the human label that comes back lands on a row training reads.
Each write is one app transaction (this process's id, a batch counter), replay-safe like the stream.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
import uuid
from typing import Any

import pyarrow as pa

from infra.core.labeling import hand_off
from infra.lake import Lake, Transaction
from infra.settings import Settings
from infra.tables import IMAGES, ONLINE_PREDICTIONS

# Row keys that travel with a queued row for the labeling hand-off only (not table columns).
CONTENT, PROBABILITIES, CLASS_NAMES, EMBEDDING = "_content", "_probabilities", "_class_names", "_embedding"
ONLINE_PATH_PREFIX = "online:"

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 3
FLUSH_ROWS = 5000
# A MERGE costs ~0.1 s of CPU whatever its size: once a second took a tenth of a core from serving.
FLUSH_SECONDS = 5.0


class InferenceLog:
    def __init__(self, settings: Settings, *, flush_s: float = FLUSH_SECONDS) -> None:
        self._settings = settings
        self._lake = Lake(settings)
        self._app_id = f"{ONLINE_PATH_PREFIX}{uuid.uuid4().hex}"
        self._batch_id = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=settings.online_log_queue)
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lakesight-inference-log", daemon=True)
        self.written = 0
        self.dropped = 0
        self.failed_writes = 0
        self.sent_to_labeling = 0
        self._count_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Queue ``rows`` (ONLINE_PREDICTIONS columns); never blocks."""
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._drop(1)

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop; rows still queued after ``timeout`` count as dropped."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._drop(self._queue.qsize())

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
        txn = Transaction(self._app_id, self._batch_id)
        self._batch_id += 1
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                self._write_once(rows, txn)
            except Exception as exc:  # noqa: BLE001 - the table is best effort; serving goes on
                if attempt < WRITE_ATTEMPTS:
                    time.sleep(0.5 * 2**attempt)
                    continue
                self.failed_writes += 1
                self._drop(len(rows))
                log.warning("could not write %d rows to %s: %s", len(rows), ONLINE_PREDICTIONS, exc)
                return
            self.written += len(rows)
            return

    def _write_once(self, rows: list[dict[str, Any]], txn: Transaction) -> None:
        # One app transaction for every table this write touches: a retry skips what committed.
        if self._settings.online_to_labeling:
            self._hand_off(rows, txn)
        self._lake.merge(ONLINE_PREDICTIONS, pa.Table.from_pylist(rows, schema=ONLINE_PREDICTIONS.schema), txn=txn)

    def _drop(self, count: int) -> None:
        with self._count_lock:  # the request path and this thread both drop
            self.dropped += count

    def _hand_off(self, rows: list[dict[str, Any]], txn: Transaction) -> None:
        threshold = self._settings.confidence_threshold
        unsure = [r for r in rows if r.get(CONTENT) and r["error"] is None and r["confidence"] < threshold]
        if not unsure:
            return
        images = pa.Table.from_pylist([_image_row(r) for r in unsure], schema=IMAGES.schema)
        sent = hand_off(self._settings, self._lake, images, app_id=txn.app_id, batch_id=txn.version)
        self._lake.merge(IMAGES, sent.table, txn=txn)
        self.sent_to_labeling += sent.sent


def _image_row(row: dict[str, Any]) -> dict[str, Any]:
    """An ``images`` row for an online image: its arrival and the model server's prediction."""
    received: dt.datetime = row["received_at"]
    return {
        "path": f"{ONLINE_PATH_PREFIX}{row['request_id']}/{row['item']}",
        "load_date": received.date(),
        "content": row[CONTENT],
        "content_hash": row["content_hash"],
        "size_bytes": row["size_bytes"],
        "arrived_at": received,
        "ingested_at": received,
        "predicted_label": row["label"],
        "confidence": row["confidence"],
        "probabilities": row[PROBABILITIES],
        "embedding": row.get(EMBEDDING),
        "class_names": row[CLASS_NAMES],
        "model_name": row["model_name"],
        "model_version": row["model_version"],
        "scored_at": received,
    }
