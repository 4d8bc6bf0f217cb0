"""The persisted event log: each event id is claimed once, by one process, and survives restarts.

SQLite under ``state_dir`` in WAL mode. A unique key on the event id turns "have I seen this?"
into one ``INSERT OR IGNORE`` (atomic across threads and processes), so replayed and concurrently
delivered events are suppressed before any work is queued. Blob uploads get a second key on
(url, eTag), because one upload can arrive as several events with different ids.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from handlers.api.payloads import Event
from handlers.sqlite import connect, now_iso, transaction


class EventStatus(StrEnum):
    """An event's status in the log; the values are what the ``events`` table stores and returns."""

    PENDING = "pending"  # claimed, not finished yet (re-queued at the next start)
    DONE = "done"
    FAILED = "failed"  # a transient error outlasted the retries
    IGNORED = "ignored"  # nothing for lakesight to do (a partial upload, an unknown type)
    REFUSED = "refused"  # invalid or not allowed (a foreign account, an unsafe name)
    DUPLICATE = "duplicate"  # the same upload as an event claimed before


# Event Grid retries a delivery for at most 24 hours; a week of ids is ample to suppress replays.
RETENTION = dt.timedelta(days=7)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT,
    finished_at TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_status ON events(status);
CREATE TABLE IF NOT EXISTS blobs (
    url TEXT NOT NULL,
    etag TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (url, etag)
);
"""


@dataclass(frozen=True)
class Claim:
    """Result of claiming a batch: the new events to process and how many were already known."""

    new: list[Event]
    duplicates: int


class EventLog:
    """Claims, outcomes and blob dedupe for delivered events."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def claim(self, events: Iterable[Event]) -> Claim:
        """Record ``events``; return those never seen before (each id is returned once, ever)."""
        new: list[Event] = []
        duplicates = 0
        stamp = now_iso()
        with self._lock, transaction(self._conn):
            for event in events:
                cursor = self._conn.execute(
                    "INSERT OR IGNORE INTO events (id, type, received_at, status, body) VALUES (?, ?, ?, ?, ?)",
                    (event.id, event.type, stamp, EventStatus.PENDING, event.to_json()),
                )
                if cursor.rowcount == 1:
                    new.append(event)
                else:
                    duplicates += 1
        return Claim(new=new, duplicates=duplicates)

    def claim_blob(self, url: str, etag: str, event_id: str) -> str | None:
        """Claim one upload (url, eTag) for ``event_id``; return the id that claimed it first if not us."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO blobs (url, etag, event_id) VALUES (?, ?, ?)", (url, etag, event_id)
            )
            row = self._conn.execute("SELECT event_id FROM blobs WHERE url = ? AND etag = ?", (url, etag)).fetchone()
        return None if row[0] == event_id else row[0]

    def finish(self, outcomes: Iterable[tuple[str, EventStatus, str]]) -> None:
        """Store ``(event_id, status, outcome)`` for processed events in one transaction.

        A status that is not an :class:`EventStatus` value raises ValueError and nothing is stored:
        a misspelt status must not become a new one in the log.
        """
        stamp = now_iso()
        rows = [(EventStatus(status), outcome[:2000], stamp, event_id) for event_id, status, outcome in outcomes]
        with self._lock, transaction(self._conn):
            self._conn.executemany("UPDATE events SET status = ?, outcome = ?, finished_at = ? WHERE id = ?", rows)

    def prune(self, older_than: dt.timedelta = RETENTION) -> int:
        """Forget finished events (and their uploads) received before ``older_than`` ago; return how many."""
        finished_before = ((dt.datetime.now(dt.UTC) - older_than).isoformat(), EventStatus.PENDING)
        with self._lock, transaction(self._conn):
            self._conn.execute(
                "DELETE FROM blobs WHERE event_id IN (SELECT id FROM events WHERE received_at < ? AND status != ?)",
                finished_before,
            )
            removed = self._conn.execute(
                "DELETE FROM events WHERE received_at < ? AND status != ?", finished_before
            ).rowcount
        return removed

    def pending(self) -> list[Event]:
        """Events claimed but never finished (a previous process stopped first), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM events WHERE status = ? ORDER BY received_at, rowid", (EventStatus.PENDING,)
            ).fetchall()
        return [Event.from_json(body) for (body,) in rows]

    def get(self, event_id: str) -> dict[str, str] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, type, status, outcome, received_at, finished_at FROM events WHERE id = ?", (str(event_id),)
            ).fetchone()
        if row is None:
            return None
        return dict(zip(["id", "type", "status", "outcome", "received_at", "finished_at"], row, strict=True))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) FROM events GROUP BY status").fetchall()
        return {status: count for status, count in rows}
