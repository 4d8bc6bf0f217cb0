"""The event log on its own: claims across connections (as two processes would), outcomes, statuses, pruning."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from handlers.api.payloads import Event
from handlers.intake.eventlog import EventLog, EventStatus


def _event(event_id: str) -> Event:
    return Event(id=event_id, type="Microsoft.Storage.BlobCreated", subject="", time="", data={"k": 1})


def test_two_logs_on_one_file_claim_each_id_once(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    logs = [EventLog(path), EventLog(path)]  # separate connections, like two handler processes
    won: list[str] = []
    barrier = threading.Barrier(2)

    def claim(log: EventLog) -> None:
        barrier.wait()
        for i in range(200):
            won.extend(e.id for e in log.claim([_event(f"e{i}")]).new)

    threads = [threading.Thread(target=claim, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == sorted(f"e{i}" for i in range(200))
    assert logs[0].claim_blob("u", "etag", "e1") is None
    assert logs[1].claim_blob("u", "etag", "e2") == "e1"


def test_prune_forgets_only_old_finished_events(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db")
    log.claim([_event("old-done"), _event("old-pending"), _event("new-done")])
    log.claim_blob("u", "etag", "old-done")
    log.finish([("old-done", EventStatus.DONE, "ok"), ("new-done", EventStatus.DONE, "ok")])
    week_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=8)).isoformat()
    log._conn.execute("UPDATE events SET received_at = ? WHERE id LIKE 'old-%'", (week_ago,))
    assert log.prune() == 1
    assert log.get("old-done") is None and log.get("old-pending")["status"] == EventStatus.PENDING
    assert log.get("new-done")["status"] == EventStatus.DONE
    assert log.claim_blob("u", "etag", "later") is None  # the upload key went with its event
    assert [e.id for e in log.claim([_event("old-done")]).new] == ["old-done"]


def test_statuses_are_stored_as_the_same_strings(tmp_path: Path) -> None:
    # Logs written before the enum existed hold these strings; readers (bench, status) compare with them.
    assert [s.value for s in EventStatus] == ["pending", "done", "failed", "ignored", "refused", "duplicate"]
    log = EventLog(tmp_path / "events.db")
    log.claim([_event("a"), _event("b")])
    log.finish([("a", EventStatus.DUPLICATE, "same upload")])
    stored = log._conn.execute("SELECT id, status, typeof(status) FROM events ORDER BY id").fetchall()
    assert stored == [("a", "duplicate", "text"), ("b", "pending", "text")]
    assert log.counts() == {"duplicate": 1, "pending": 1}


def test_finish_refuses_a_status_outside_the_enum(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db")
    log.claim([_event("a"), _event("b")])
    with pytest.raises(ValueError, match="'don'"):
        log.finish([("a", EventStatus.DONE, "ok"), ("b", "don", "a typo")])
    # Nothing of the batch was written: a typo never becomes a status in the log.
    assert log.get("a")["status"] == log.get("b")["status"] == EventStatus.PENDING
