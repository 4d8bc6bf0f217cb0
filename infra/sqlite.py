"""SQLite as lakesight uses it: one connection setup, one transaction shape, one timestamp format.

The handlers' event log, launcher and relay each keep a small database under ``state_dir``, shared
by threads of one process and by several processes. They all open it with :func:`connect` and
write multi-statement changes inside :func:`transaction`. The dead-letter table
(``infra.deadletters``) waits for a lock as long (:data:`BUSY_TIMEOUT_S`).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# How long a writer waits for another connection's write transaction before "database is locked".
BUSY_TIMEOUT_S = 30.0


def now_iso() -> str:
    """The current UTC time as ISO-8601, the format every handler table stores."""
    return dt.datetime.now(dt.UTC).isoformat()


def connect(path: Path, *, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A SQLite connection tuned for many small commits from several threads and processes.

    Autocommit mode (``isolation_level=None``): a single statement commits by itself, and a
    multi-statement change says where it starts and ends with :func:`transaction`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable across process crashes (only an OS crash can lose the tail).
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block as one write transaction: committed at the end, rolled back on any exception.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a read-then-write block (claim, check,
    insert) cannot interleave with another connection's; a second writer waits up to the
    connection's busy timeout. The exception, including KeyboardInterrupt, is re-raised.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")  # fails on a full or read-only disk: rolled back below, or the
        # connection would stay inside this transaction and refuse every later one
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk, an I/O error)
            conn.execute("ROLLBACK")
        raise
