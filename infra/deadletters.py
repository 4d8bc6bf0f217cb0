"""The local dead-letter table: events the handlers acknowledged but could not act on.

Event Grid dead-letters a delivery only when it is refused as a whole (400, 413) or runs out of
retries. Its batches are all-or-none, so one bad event inside a valid batch cannot be refused on
its own: the handlers acknowledge the batch, and an event refused there (an unsafe blob name, a
bad field, an over-size export) or failing past its retries is kept here instead, with the raw
event (at most :data:`MAX_EVENT_CHARS`), the status, the reason and the time (docs/DEPLOY.md).

SQLite at ``<state_dir>/handlers/deadletters.db``, table ``dead_letters`` keyed by event id (a
re-queued event is recorded once). The handlers write it with :class:`DeadLetterTable`;
:func:`read_dead_letters` reads it for the status snapshot and creates nothing.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.settings import Settings
from infra.sqlite import BUSY_TIMEOUT_S
from infra.web import one_line

MAX_EVENT_CHARS = 16_384  # the raw event kept; Event Grid events are a few hundred bytes
MAX_REASON_CHARS = 2_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    event TEXT NOT NULL,
    event_truncated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_recorded ON dead_letters(recorded_at);
"""


def dead_letter_path(settings: Settings) -> Path:
    return settings.state_dir / "handlers" / "deadletters.db"


@dataclass(frozen=True)
class DeadLetter:
    """One event the handlers could not act on: its id, type, final status, why, and the raw event (JSON)."""

    event_id: str
    event_type: str
    status: str
    reason: str
    event: str


class DeadLetterTable:
    """Writes dead letters (the handlers' side); the database is created on first use."""

    def __init__(self, settings: Settings):
        self.path = dead_letter_path(settings)

    def record(self, letters: Iterable[DeadLetter]) -> int:
        """Keep ``letters`` (a letter for an event id already kept replaces it); return how many."""
        stamp = dt.datetime.now(dt.UTC).isoformat()
        rows = [
            (
                letter.event_id,
                letter.event_type,
                letter.status,
                one_line(letter.reason, MAX_REASON_CHARS),
                stamp,
                letter.event[:MAX_EVENT_CHARS],
                int(len(letter.event) > MAX_EVENT_CHARS),
            )
            for letter in letters
        ]
        if not rows:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)) as conn, conn:
            conn.executescript(_SCHEMA)
            conn.executemany("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def prune(self, older_than: dt.timedelta, *, keep: int) -> int:
        """Forget letters recorded before ``older_than`` ago and beyond the newest ``keep``; return how many."""
        if not self.path.exists():
            return 0
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat()
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)) as conn, conn:
            conn.executescript(_SCHEMA)
            removed = conn.execute("DELETE FROM dead_letters WHERE recorded_at < ?", (cutoff,)).rowcount
            removed += conn.execute(
                "DELETE FROM dead_letters WHERE rowid NOT IN"
                " (SELECT rowid FROM dead_letters ORDER BY recorded_at DESC, rowid DESC LIMIT ?)",
                (keep,),
            ).rowcount
        return removed

    def replayable(self, statuses: Iterable[str], event_ids: Iterable[str] = ()) -> list[DeadLetter]:
        """The letters of ``statuses`` (only ``event_ids`` when given) whose raw event was kept whole,
        oldest first: the ones a replay can hand back to the handlers."""
        if not self.path.exists():
            return []
        wanted, ids = list(statuses), list(event_ids)
        sql = (
            "SELECT event_id, event_type, status, reason, event FROM dead_letters WHERE event_truncated = 0"
            f" AND status IN ({', '.join('?' * len(wanted))})"
        )
        if ids:
            sql += f" AND event_id IN ({', '.join('?' * len(ids))})"
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)) as conn:
            return [DeadLetter(*row) for row in conn.execute(sql + " ORDER BY recorded_at", (*wanted, *ids))]

    def forget(self, event_ids: Iterable[str]) -> int:
        """Remove the letters of ``event_ids`` (replayed); return how many."""
        rows = [(event_id,) for event_id in event_ids]
        if not rows or not self.path.exists():
            return 0
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)) as conn, conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM dead_letters WHERE event_id = ?", rows)
            return conn.total_changes - before


def read_dead_letters(settings: Settings, *, recent: int = 5) -> dict[str, Any] | None:
    """``{"count", "recent": [{event_id, event_type, status, reason, recorded_at}]}`` newest first;
    None when no event was ever dead-lettered. Opened read-only: a status read creates nothing."""
    path = dead_letter_path(settings)
    if not path.exists():
        return None
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)) as conn:
        count = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        columns = ["event_id", "event_type", "status", "reason", "recorded_at"]
        rows = conn.execute(
            f"SELECT {', '.join(columns)} FROM dead_letters ORDER BY recorded_at DESC, rowid DESC LIMIT ?", (recent,)
        ).fetchall()
    return {"count": count, "recent": [dict(zip(columns, row, strict=True)) for row in rows]}
