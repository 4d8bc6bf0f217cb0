"""The event log on its own: claims across connections (as two processes would), outcomes, pruning."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from handlers.eventlog import DONE, PENDING, EventLog
from handlers.events import Event


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
    log.finish([("old-done", DONE, "ok"), ("new-done", DONE, "ok")])
    week_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=8)).isoformat()
    log._conn.execute("UPDATE events SET received_at = ? WHERE id LIKE 'old-%'", (week_ago,))
    assert log.prune() == 1
    assert log.get("old-done") is None and log.get("old-pending")["status"] == PENDING
    assert log.get("new-done")["status"] == DONE
    assert log.claim_blob("u", "etag", "later") is None  # the upload key went with its event
    assert [e.id for e in log.claim([_event("old-done")]).new] == ["old-done"]
