"""The scoring stream's status file (``streams.scoring.progress``): what ``lakesight status`` and the page read."""

from __future__ import annotations

import json
import os
import time

from infra.settings import Settings
from infra.status_files import judge_stream, read_stream_status, stream_status_path
from streams.scoring.progress import RECENT, BatchRecord, ScoreStatus
from tests.helpers.status import batch_fields

# The keys of each batch in the status file, in order (docs/STREAMING.md, Observability).
BATCH_KEYS = [
    "batch_id",
    "rows",
    "errors",
    "inserted",
    "updated",
    "sent_to_labeling",
    "model_version",
    "executors_s",
    "pool_s",
    "driver_s",
    "merge_s",
    "compact_s",
    "rows_per_s",
    "table_version",
    "committed_at",
]


def _record(batch_id: int, *, rows: int, errors: int, sent: int, version: str | None) -> BatchRecord:
    return BatchRecord(**batch_fields(batch_id, rows=rows, errors=errors, sent=sent, model_version=version))


def test_each_batch_is_written_with_the_same_keys_and_totals_add_up(settings: Settings) -> None:
    status = ScoreStatus(settings, source="directory:/in", query_name="score_directory_x")
    status.batch(_record(0, rows=10, errors=1, sent=2, version="1"))
    status.batch(_record(1, rows=5, errors=0, sent=0, version=None))  # nothing scored: the version stays

    written = json.loads(stream_status_path(settings).read_text())

    assert list(written["last_batch"]) == BATCH_KEYS
    assert written["last_batch"]["batch_id"] == 1 and written["last_batch"]["compact_s"] is None
    assert [b["batch_id"] for b in written["recent_batches"]] == [0, 1]
    assert (written["rows_total"], written["errors_total"], written["sent_to_labeling_total"]) == (15, 1, 2)
    assert written["model_version"] == "1"


def test_only_the_most_recent_batches_are_kept(settings: Settings) -> None:
    status = ScoreStatus(settings, source="arrivals:/a", query_name="q")
    for batch_id in range(RECENT + 5):
        status.batch(_record(batch_id, rows=1, errors=0, sent=0, version="2"))
    written = json.loads(stream_status_path(settings).read_text())
    assert [b["batch_id"] for b in written["recent_batches"]] == list(range(5, RECENT + 5))
    assert written["rows_total"] == RECENT + 5


def test_every_write_stamps_the_pid_and_a_heartbeat(settings: Settings) -> None:
    before = time.time()
    status = ScoreStatus(settings, source="arrivals:/a", query_name="q")
    first = read_stream_status(settings)
    status.update(state="running")
    second = read_stream_status(settings)
    assert first is not None and second is not None
    assert first["pid"] == os.getpid() and before <= first["heartbeat_at"] <= second["heartbeat_at"] <= time.time()


def test_the_heartbeat_keeps_the_file_fresh_while_the_stream_runs_and_stops_with_it(settings: Settings) -> None:
    status = ScoreStatus(settings, source="arrivals:/a", query_name="q")
    status.update(state="running")
    with status.heartbeat(every_s=0.05):
        written = read_stream_status(settings)
        assert written is not None
        time.sleep(0.5)  # no batch, no Spark event: only the heartbeat writes
        beats = read_stream_status(settings)
        assert beats is not None and beats["heartbeat_at"] > written["heartbeat_at"]
        assert judge_stream(beats)["state"] == "running"
    last = read_stream_status(settings)
    time.sleep(0.3)
    assert read_stream_status(settings) == last  # the heartbeat ended with the block
