"""The SQLite helpers (infra.sqlite) of the handler databases: connection setup, one transaction shape, timestamps."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from infra.sqlite import connect, now_iso, transaction


def _db(tmp_path: Path, **options: float) -> sqlite3.Connection:
    conn = connect(tmp_path / "nested" / "t.db", **options)
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    return conn


def _keys(conn: sqlite3.Connection) -> list[str]:
    return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]


def test_connect_creates_the_folder_in_wal_mode(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    assert (tmp_path / "nested" / "t.db").exists()
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert not conn.in_transaction  # autocommit: transactions are only where transaction() opens them


def test_transaction_commits_at_the_end(tmp_path: Path) -> None:
    conn, other = _db(tmp_path), _db(tmp_path)

    def insert_unless_present(key: str) -> str:
        # The launcher's claim returns from inside the block: that must commit too.
        with transaction(conn):
            if conn.execute("SELECT 1 FROM t WHERE k = ?", (key,)).fetchone():
                return "present"
            conn.execute("INSERT INTO t VALUES (?)", (key,))
            assert _keys(other) == []  # not visible to another connection before the commit
        return "inserted"

    assert insert_unless_present("a") == "inserted"
    assert insert_unless_present("a") == "present"
    assert not conn.in_transaction
    assert _keys(other) == ["a"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_transaction_rolls_back_on_any_exception_and_reraises(tmp_path: Path, error: type[BaseException]) -> None:
    conn = _db(tmp_path)
    with pytest.raises(error), transaction(conn):
        conn.execute("INSERT INTO t VALUES ('gone')")
        raise error("mid-transaction")
    assert not conn.in_transaction
    assert _keys(conn) == [] and _keys(_db(tmp_path)) == []
    with transaction(conn):  # the connection is usable afterwards
        conn.execute("INSERT INTO t VALUES ('kept')")
    assert _keys(conn) == ["kept"]


def test_a_second_writer_fails_busy_with_a_short_timeout(tmp_path: Path) -> None:
    holder, impatient = _db(tmp_path), _db(tmp_path, timeout=0.1)
    with transaction(holder):
        holder.execute("INSERT INTO t VALUES ('first')")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"), transaction(impatient):
            pass
        assert time.monotonic() - started < 5
    assert not impatient.in_transaction
    assert _keys(impatient) == ["first"]


def test_a_second_writer_waits_for_the_first_to_commit(tmp_path: Path) -> None:
    first, second = _db(tmp_path), _db(tmp_path)
    holding = threading.Event()

    def hold() -> None:
        with transaction(first):
            first.execute("INSERT INTO t VALUES ('first')")
            holding.set()
            time.sleep(0.4)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(5)
    started = time.monotonic()
    with transaction(second):  # BEGIN IMMEDIATE blocks until the other write transaction ends
        waited = time.monotonic() - started
        seen = _keys(second)
        second.execute("INSERT INTO t VALUES ('second')")
    thread.join()
    assert waited >= 0.2
    assert seen == ["first"]  # read inside the second transaction, after the first committed
    assert _keys(first) == ["first", "second"]


def test_now_iso_is_utc_with_microseconds() -> None:
    before = dt.datetime.now(dt.UTC)
    parsed = dt.datetime.fromisoformat(now_iso())
    assert parsed.utcoffset() == dt.timedelta(0) and before <= parsed <= dt.datetime.now(dt.UTC)
