"""The persisted event log: the durable queue of delivered events, each worked on by one process at a time.

SQLite under ``state_dir`` in WAL mode. A unique key on the event id turns "have I seen this?"
into one ``INSERT OR IGNORE`` (atomic across threads and processes), so replayed and concurrently
delivered events are suppressed before any work is queued. Blob uploads get a second key on
(url, eTag), because one upload can arrive as several events with different ids.

An event is ``pending`` until its work is finished. Whoever works on a pending event holds its
**lease**: ``owner`` (host, pid and an instance id) and ``lease_until`` (epoch seconds), renewed
while the work is queued or running (:meth:`EventLog.renew`). A second handler process on the same
state folder never takes an event whose lease is live; the lease of a process that died runs out
and its events are taken over (:meth:`EventLog.take_due`). Work that fails is put back without an
owner and with ``next_at`` (back-off) and ``attempts`` (:meth:`EventLog.defer`), to be taken again
by the running process; a redelivery of such an event takes it at once (:meth:`EventLog.claim`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from handlers.api.payloads import Event
from handlers.intake.lanes import describe
from infra.processes import pid_alive
from infra.sqlite import BUSY_TIMEOUT_S, connect, now_iso, transaction
from infra.web import one_line


class EventStatus(StrEnum):
    """An event's status in the log; the values are what the ``events`` table stores and returns."""

    PENDING = "pending"  # claimed, not finished yet (queued, running, or waiting for its retry)
    DONE = "done"
    FAILED = "failed"  # errors outlasted the retries: given up (dead-lettered; ``lakesight events retry``)
    IGNORED = "ignored"  # nothing for lakesight to do (a partial upload, an unknown type)
    REFUSED = "refused"  # invalid or not allowed (a foreign account, an unsafe name)
    DUPLICATE = "duplicate"  # the same upload as an event claimed before


# Event Grid retries a delivery for at most 24 hours; a week of ids is ample to suppress replays.
RETENTION = dt.timedelta(days=7)
# How long a claimed event stays its owner's without a renewal (settings.handler_lease_s overrides).
LEASE_S = 30.0
# Columns added after the first release: (name, declaration), added to older logs when opened.
_LEASE_COLUMNS = (
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("next_at", "REAL NOT NULL DEFAULT 0"),
    ("owner", "TEXT"),
    ("lease_until", "REAL"),
)

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
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    url TEXT NOT NULL,
    etag TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (url, etag)
);
"""


@dataclass(frozen=True)
class Claim:
    """Result of claiming a batch: the events to process now and how many were already known.

    ``new`` holds events never seen before and ``retriggered`` ones (also in ``new``): redeliveries
    of events left pending without a live owner or given up, taken again instead of suppressed.
    """

    new: list[Event]
    duplicates: int
    retriggered: int = 0


def process_owner() -> str:
    """This handler instance's lease owner: ``host:pid:instance`` (two instances in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_dead_here(owner: str, host: str) -> bool:
    """Whether ``owner`` names a process of this host that no longer runs."""
    owner_host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return owner_host == host and pid.isdigit() and not pid_alive(int(pid))


class EventLog:
    """Claims, leases, retries, outcomes and blob dedupe for delivered events."""

    def __init__(
        self, path: Path, *, owner: str | None = None, lease_s: float = LEASE_S, wait_s: float = BUSY_TIMEOUT_S
    ):
        """``wait_s``: how long a write waits for another connection's write lock before it fails."""
        self.path = path
        self.owner = owner or process_owner()
        self.lease_s = lease_s
        self.write_error: str | None = None  # the last write's error, until a write succeeds again
        self._lock = threading.Lock()
        self._wait_ms = wait_s * 1000
        self._conn = connect(path, timeout=wait_s)
        self._conn.executescript(_SCHEMA)
        self._add_lease_columns()
        # Reads (the backlog /healthz shows, lookups) on a connection of their own: in WAL mode they
        # never wait for a writer, so a probe answers even while a writer waits for the write lock.
        self._read_lock = threading.Lock()
        self._reader = connect(path, timeout=wait_s)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection; its failure (a locked, read-only or full
        log) is kept in :attr:`write_error` until a later write succeeds."""
        try:
            with self._lock, transaction(self._conn) as conn:
                yield conn
        except sqlite3.Error as exc:
            self.write_error = describe(exc)
            raise
        self.write_error = None

    def probe(self) -> bool:
        """After a failed write: whether the log takes a write again, without waiting for another
        writer's lock (one committed row, so a read-only or full disk is found out too). Clears
        :attr:`write_error` when it does."""
        if self.write_error is None:
            return True
        with self._lock:
            self._conn.execute("PRAGMA busy_timeout = 0")
            try:
                self._conn.execute("INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, ?)", (time.time(),))
            except sqlite3.Error as exc:
                self.write_error = describe(exc)
                return False
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {self._wait_ms:.0f}")
        self.write_error = None
        return True

    def _add_lease_columns(self) -> None:
        """Bring a log written before leases up to date (idempotent; concurrent openers may race)."""
        with self._writing():
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(events)")}
            for name, declaration in _LEASE_COLUMNS:
                if name not in have:
                    self._conn.execute(f"ALTER TABLE events ADD COLUMN {name} {declaration}")
            self._conn.execute("CREATE INDEX IF NOT EXISTS events_pending ON events(status, next_at)")

    def close(self) -> None:
        """Hand back this instance's leases (a clean stop: the next start takes them at once), then close."""
        try:
            self.release()
        finally:
            with self._lock, self._read_lock:
                self._conn.close()
                self._reader.close()

    def claim(self, events: Iterable[Event]) -> Claim:
        """Record ``events`` under this owner's lease; return those to process now.

        An id never seen before is new. A known id is a duplicate, unless its event is still
        pending with no live lease (its last attempt failed and it waits for a retry, or its owner
        died) or was given up (``failed``): then the redelivery takes it again, as Event Grid
        intends when it retries.
        """
        new: list[Event] = []
        duplicates = retriggered = 0
        stamp, now = now_iso(), time.time()
        with self._writing():
            for event in events:
                cursor = self._conn.execute(
                    "INSERT OR IGNORE INTO events (id, type, received_at, status, body, owner, lease_until)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (event.id, event.type, stamp, EventStatus.PENDING, event.to_json(), self.owner, now + self.lease_s),
                )
                if cursor.rowcount == 1:
                    new.append(event)
                elif self._retake(event.id, now):
                    new.append(event)
                    retriggered += 1
                else:
                    duplicates += 1
        return Claim(new=new, duplicates=duplicates, retriggered=retriggered)

    def _retake(self, event_id: str, now: float) -> bool:
        """Take a known event again if nobody works on it (the caller holds the transaction)."""
        cursor = self._conn.execute(
            "UPDATE events SET status = ?, owner = ?, lease_until = ?, next_at = 0,"
            " attempts = CASE WHEN status = ? THEN 0 ELSE attempts END"
            " WHERE id = ? AND (status = ? OR (status = ? AND (lease_until IS NULL OR lease_until < ?)))",
            (
                EventStatus.PENDING,
                self.owner,
                now + self.lease_s,
                EventStatus.FAILED,
                event_id,
                EventStatus.FAILED,
                EventStatus.PENDING,
                now,
            ),
        )
        return cursor.rowcount == 1

    def renew(self, event_ids: Iterable[str]) -> int:
        """Extend this owner's lease on ``event_ids`` (the work it still holds); return how many."""
        until = time.time() + self.lease_s
        rows = [(until, event_id, self.owner, EventStatus.PENDING) for event_id in event_ids]
        if not rows:  # nothing held: no write lock to take
            return 0
        with self._writing():
            before = self._conn.total_changes
            self._conn.executemany("UPDATE events SET lease_until = ? WHERE id = ? AND owner = ? AND status = ?", rows)
            return self._conn.total_changes - before

    def confirm(self, event_ids: list[str]) -> set[str]:
        """Of ``event_ids``, those this owner still holds (pending, its lease), their leases renewed:
        work is about to start on them. The others were finished meanwhile or taken over by another
        process while this one could not renew (paused, or the log was locked past the lease), and
        must not run again here."""
        if not event_ids:
            return set()
        with self._writing():
            rows = self._conn.execute(
                "UPDATE events SET lease_until = ? WHERE owner = ? AND status = ?"
                " AND id IN (SELECT value FROM json_each(?)) RETURNING id",
                (time.time() + self.lease_s, self.owner, EventStatus.PENDING, json.dumps(event_ids)),
            ).fetchall()
        return {event_id for (event_id,) in rows}

    def take_due(self, limit: int) -> list[Event]:
        """Take up to ``limit`` pending events nobody holds whose retry time has come, oldest first."""
        now = time.time()
        due = (
            "SELECT id, body FROM events WHERE status = ? AND next_at <= ?"
            " AND (lease_until IS NULL OR lease_until < ?) ORDER BY received_at, rowid LIMIT ?"
        )
        args = (EventStatus.PENDING, now, now, limit)
        with self._read_lock:  # a read first: most ticks find nothing and take no write lock
            if self._reader.execute(due, args).fetchone() is None:
                return []
        with self._writing():
            rows = self._conn.execute(due, args).fetchall()
            self._conn.executemany(
                "UPDATE events SET owner = ?, lease_until = ? WHERE id = ?",
                [(self.owner, now + self.lease_s, event_id) for event_id, _ in rows],
            )
        return [Event.from_json(body) for _, body in rows]

    def defer(self, event_ids: Iterable[str], reason: str, delay_s: Callable[[int], float]) -> dict[str, int]:
        """Put failed work back for a retry: no owner, ``attempts`` + 1, due ``delay_s(attempts)`` from now.

        ``reason`` (one line) is kept as the outcome so far; return each event's attempts.
        """
        now = time.time()
        attempts: dict[str, int] = {}
        with self._writing():
            for event_id in event_ids:
                row = self._conn.execute(  # only work this owner holds: another's lease is not ours to end
                    "SELECT attempts FROM events WHERE id = ? AND status = ? AND owner = ?",
                    (event_id, EventStatus.PENDING, self.owner),
                ).fetchone()
                if row is None:
                    continue
                attempts[event_id] = row[0] + 1
                self._conn.execute(
                    "UPDATE events SET attempts = ?, next_at = ?, owner = NULL, lease_until = NULL, outcome = ?"
                    " WHERE id = ?",
                    (row[0] + 1, now + delay_s(row[0] + 1), one_line(reason, 2000), event_id),
                )
        return attempts

    def release(self) -> int:
        """Hand back every lease this owner holds (a clean stop); return how many."""
        with self._writing():
            return self._conn.execute(
                "UPDATE events SET owner = NULL, lease_until = NULL WHERE owner = ? AND status = ?",
                (self.owner, EventStatus.PENDING),
            ).rowcount

    def release_dead_owners(self) -> int:
        """Hand back leases of handler processes of this host that are gone (a restart takes their
        work at once instead of after the lease); return how many events."""
        host = socket.gethostname()
        with self._read_lock:
            owners = [
                owner
                for (owner,) in self._reader.execute(
                    "SELECT DISTINCT owner FROM events WHERE status = ? AND owner IS NOT NULL", (EventStatus.PENDING,)
                )
            ]
        released = 0
        for owner in owners:
            if owner != self.owner and _owner_dead_here(owner, host):
                with self._writing():
                    released += self._conn.execute(
                        "UPDATE events SET owner = NULL, lease_until = NULL WHERE owner = ? AND status = ?",
                        (owner, EventStatus.PENDING),
                    ).rowcount
        return released

    def requeue(self, events: Iterable[Event]) -> int:
        """Make ``events`` pending again from their first attempt, recorded anew if pruned (a replay of
        dead letters: the running handler takes them); return how many."""
        stamp = now_iso()
        count = 0
        with self._writing():
            for event in events:
                self._conn.execute(
                    "INSERT OR IGNORE INTO events (id, type, received_at, status, body) VALUES (?, ?, ?, ?, ?)",
                    (event.id, event.type, stamp, EventStatus.PENDING, event.to_json()),
                )
                count += self._conn.execute(
                    "UPDATE events SET status = ?, attempts = 0, next_at = 0, owner = NULL, lease_until = NULL,"
                    " finished_at = NULL WHERE id = ?",
                    (EventStatus.PENDING, event.id),
                ).rowcount
        return count

    def backlog(self) -> dict[str, float | int | None]:
        """Pending events: how many, how many wait for a retry, and the oldest one's age in seconds."""
        with self._read_lock:
            pending, retrying, oldest = self._reader.execute(
                "SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0), MIN(received_at) FROM events WHERE status = ?",
                (EventStatus.PENDING,),
            ).fetchone()
        age = None
        if oldest is not None:
            age = round((dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(oldest)).total_seconds(), 1)
        return {"pending": pending, "retrying": retrying, "oldest_pending_s": age}

    def claim_blob(self, url: str, etag: str, event_id: str) -> str | None:
        """Claim one upload (url, eTag) for ``event_id``; return the id that claimed it first if not us."""
        with self._writing():
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
        rows = [
            (EventStatus(status), one_line(outcome, 2000), stamp, event_id) for event_id, status, outcome in outcomes
        ]
        with self._writing():
            self._conn.executemany("UPDATE events SET status = ?, outcome = ?, finished_at = ? WHERE id = ?", rows)

    def prune(self, older_than: dt.timedelta = RETENTION, *, keep: int | None = None) -> int:
        """Forget finished events (and their uploads) received before ``older_than`` ago, and beyond
        the newest ``keep`` finished ones; pending events are never forgotten. Return how many."""
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat()
        with self._writing():
            if keep is not None:
                row = self._conn.execute(
                    "SELECT received_at FROM events WHERE status != ? ORDER BY received_at DESC LIMIT 1 OFFSET ?",
                    (EventStatus.PENDING, keep),
                ).fetchone()
                if row is not None:  # the newest one past ``keep``: it and everything older goes
                    cutoff = max(cutoff, row[0] + "\0")
            finished_before = (cutoff, EventStatus.PENDING)
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
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT body FROM events WHERE status = ? ORDER BY received_at, rowid", (EventStatus.PENDING,)
            ).fetchall()
        return [Event.from_json(body) for (body,) in rows]

    def get(self, event_id: str) -> dict[str, str] | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT id, type, status, outcome, received_at, finished_at FROM events WHERE id = ?", (str(event_id),)
            ).fetchone()
        if row is None:
            return None
        return dict(zip(["id", "type", "status", "outcome", "received_at", "finished_at"], row, strict=True))

    def counts(self) -> dict[str, int]:
        with self._read_lock:
            rows = self._reader.execute("SELECT status, COUNT(*) FROM events GROUP BY status").fetchall()
        return {status: count for status, count in rows}
