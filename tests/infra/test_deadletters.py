"""The local dead-letter table: bounded rows written by the handlers, read without creating anything."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from infra.deadletters import MAX_EVENT_CHARS, DeadLetter, DeadLetterTable, dead_letter_path, read_dead_letters
from infra.settings import Settings


def test_a_fresh_state_dir_has_no_dead_letters_and_reading_creates_nothing(tmp_path: Path) -> None:
    assert read_dead_letters(Settings(state_dir=tmp_path / "state")) is None
    assert not (tmp_path / "state").exists()


def test_letters_are_kept_once_per_event_bounded_and_newest_first(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    table = DeadLetterTable(settings)
    assert table.record([]) == 0 and not dead_letter_path(settings).exists()
    table.record([DeadLetter("e1", "Microsoft.Storage.BlobCreated", "refused", "unsafe blob url", '{"id":"e1"}')])
    huge = '{"id":"e2","data":"' + "x" * (2 * MAX_EVENT_CHARS) + '"}'
    table.record([DeadLetter("e2", "Microsoft.Storage.BlobCreated", "failed", "OSError: disk full", huge)])
    table.record([DeadLetter("e1", "Microsoft.Storage.BlobCreated", "refused", "unsafe blob url", '{"id":"e1"}')])

    letters = read_dead_letters(settings, recent=5)
    assert letters["count"] == 2
    assert [(r["event_id"], r["status"], r["reason"]) for r in letters["recent"]] == [
        ("e1", "refused", "unsafe blob url"),  # recorded again (a re-queued event): still one row
        ("e2", "failed", "OSError: disk full"),
    ]
    with sqlite3.connect(dead_letter_path(settings)) as conn:
        event, truncated = conn.execute(
            "SELECT event, event_truncated FROM dead_letters WHERE event_id = 'e2'"
        ).fetchone()
    assert len(event) == MAX_EVENT_CHARS and truncated == 1


def test_prune_forgets_old_letters_and_keeps_the_newest(settings: Settings) -> None:
    table = DeadLetterTable(settings)
    for i in range(5):
        table.record([DeadLetter(f"e{i}", "t", "refused", "why", "{}")])
    with sqlite3.connect(dead_letter_path(settings)) as conn:
        conn.execute("UPDATE dead_letters SET recorded_at = '2020-01-01T00:00:00+00:00' WHERE event_id = 'e4'")
    assert table.prune(dt.timedelta(days=30), keep=2) == 3  # e4 by age, e0 and e1 by count
    assert sorted(r["event_id"] for r in read_dead_letters(settings)["recent"]) == ["e2", "e3"]


def test_a_multi_line_reason_is_kept_on_one_line(settings: Settings) -> None:
    DeadLetterTable(settings).record([DeadLetter("e", "t", "failed", "BlobNotFound\nRequestId:1\nTime:2", "{}")])
    assert read_dead_letters(settings)["recent"][0]["reason"] == "BlobNotFound RequestId:1 Time:2"
