"""The event log on its own: claims across connections (as two processes would), outcomes, statuses, pruning."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

import pytest

from handlers.api.payloads import Event
from handlers.intake.eventlog import EventLog, EventStatus
from tests.helpers.waiting import wait_until


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


def test_prune_keeps_at_most_the_newest_finished_events(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db")
    for i in range(6):
        log.claim([_event(f"e{i}")])
        log._conn.execute("UPDATE events SET received_at = ? WHERE id = ?", (f"2026-01-01T00:00:0{i}+00:00", f"e{i}"))
    log.finish([(f"e{i}", EventStatus.DONE, "ok") for i in range(5)])  # e5 stays pending
    assert log.prune(dt.timedelta(days=3650), keep=2) == 3
    assert [e for e in (f"e{i}" for i in range(6)) if log.get(e)] == ["e3", "e4", "e5"]


def test_a_redelivery_takes_again_only_work_nobody_holds(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first, second = EventLog(path, lease_s=60), EventLog(path, lease_s=60)
    assert [e.id for e in first.claim([_event("live"), _event("waiting"), _event("given-up")]).new] == [
        "live",
        "waiting",
        "given-up",
    ]
    first.defer(["waiting"], "arrivals root unwritable", lambda attempts: 60.0)
    first.finish([("given-up", EventStatus.FAILED, "given up")])
    claim = second.claim([_event("live"), _event("waiting"), _event("given-up")])
    assert ([e.id for e in claim.new], claim.retriggered, claim.duplicates) == (["waiting", "given-up"], 2, 1)
    rows = {row[0]: row[1:] for row in second._conn.execute("SELECT id, owner, status, attempts FROM events")}
    assert rows["live"] == (first.owner, EventStatus.PENDING, 0)
    assert rows["waiting"] == (second.owner, EventStatus.PENDING, 1)
    assert rows["given-up"] == (second.owner, EventStatus.PENDING, 0)  # a fresh start of its attempts


def test_expired_leases_and_due_retries_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    dying, other = EventLog(path, lease_s=0.2), EventLog(path, lease_s=30)
    dying.claim([_event("held"), _event("backing-off")])
    dying.defer(["backing-off"], "boom", lambda attempts: 0.3)
    assert other.take_due(10) == []  # the lease is live, the back-off not over
    assert dying.renew(["held"]) == 1
    taken: list[Event] = []
    wait_until(lambda: taken.extend(other.take_due(10)) or len(taken) == 2, "the lease and the back-off to end")
    assert sorted(e.id for e in taken) == ["backing-off", "held"]
    assert dying.renew(["held"]) == 0  # no longer its own


def test_a_log_written_before_leases_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE events (id TEXT PRIMARY KEY, type TEXT NOT NULL, received_at TEXT NOT NULL,"
            " status TEXT NOT NULL, outcome TEXT, finished_at TEXT, body TEXT NOT NULL);"
        )
        conn.execute(
            "INSERT INTO events VALUES ('old', 't', '2026-01-01', 'pending', NULL, NULL, ?)", (_event("old").to_json(),)
        )
    log = EventLog(path)
    assert [e.id for e in log.take_due(10)] == ["old"]  # left pending by an older handler: taken
