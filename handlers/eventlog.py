"""The persisted event log: each event id is claimed once, by one process, and survives restarts.

SQLite under ``state_dir`` in WAL mode. A unique key on the event id turns "have I seen this?"
into one ``INSERT OR IGNORE`` (atomic across threads and processes), so replayed and concurrently
delivered events are suppressed before any work is queued. Blob uploads get a second key on
(url, eTag), because one upload can arrive as several events with different ids.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from handlers.events import Event

PENDING = "pending"
DONE = "done"
FAILED = "failed"
IGNORED = "ignored"
REFUSED = "refused"
DUPLICATE = "duplicate"

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


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def connect(path: Path) -> sqlite3.Connection:
    """A SQLite connection tuned for many small commits from several threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable across process crashes (only an OS crash can lose the tail).
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


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
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    cursor = self._conn.execute(
                        "INSERT OR IGNORE INTO events (id, type, received_at, status, body) VALUES (?, ?, ?, ?, ?)",
                        (event.id, event.type, stamp, PENDING, event.to_json()),
                    )
                    if cursor.rowcount == 1:
                        new.append(event)
                    else:
                        duplicates += 1
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return Claim(new=new, duplicates=duplicates)

    def claim_blob(self, url: str, etag: str, event_id: str) -> str | None:
        """Claim one upload (url, eTag) for ``event_id``; return the id that claimed it first if not us."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO blobs (url, etag, event_id) VALUES (?, ?, ?)", (url, etag, event_id)
            )
            row = self._conn.execute("SELECT event_id FROM blobs WHERE url = ? AND etag = ?", (url, etag)).fetchone()
        return None if row[0] == event_id else row[0]

    def finish(self, outcomes: Iterable[tuple[str, str, str]]) -> None:
        """Store ``(event_id, status, outcome)`` for processed events in one transaction."""
        stamp = now_iso()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "UPDATE events SET status = ?, outcome = ?, finished_at = ? WHERE id = ?",
                    [(status, outcome[:2000], stamp, event_id) for event_id, status, outcome in outcomes],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def prune(self, older_than: dt.timedelta = RETENTION) -> int:
        """Forget finished events (and their uploads) received before ``older_than`` ago; return how many."""
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "DELETE FROM blobs WHERE event_id IN (SELECT id FROM events WHERE received_at < ? AND status != ?)",
                    (cutoff, PENDING),
                )
                removed = self._conn.execute(
                    "DELETE FROM events WHERE received_at < ? AND status != ?", (cutoff, PENDING)
                ).rowcount
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return removed

    def pending(self) -> list[Event]:
        """Events claimed but never finished (a previous process stopped first), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM events WHERE status = ? ORDER BY received_at, rowid", (PENDING,)
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
