"""The scoring stream's status file (``streams.scoring.progress``): what ``lakesight status`` and the page read."""

from __future__ import annotations

import json

from infra.settings import Settings
from infra.status import stream_status_path
from streams.scoring.progress import RECENT, BatchRecord, ScoreStatus

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
    "driver_s",
    "merge_s",
    "compact_s",
    "rows_per_s",
    "table_version",
    "committed_at",
]


def _record(batch_id: int, *, rows: int, errors: int, sent: int, version: str | None) -> BatchRecord:
    return BatchRecord(
        batch_id=batch_id,
        rows=rows,
        errors=errors,
        inserted=rows,
        updated=0,
        sent_to_labeling=sent,
        model_version=version,
        executors_s=0.5,
        driver_s=0.1,
        merge_s=0.05,
        compact_s=None,
        rows_per_s=200.0,
        table_version=batch_id + 1,
        committed_at=1_700_000_000.0,
    )


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
