"""The event path of a real ``lakesight serve-events`` process under faults of its state folder, injected
the way they happen: another process holding the event log's write lock, a read-only (immutable)
state folder, a full disk. While the fault lasts a delivery is never acknowledged unless durable
(503 with Retry-After, so Event Grid delivers again), ``/healthz`` and ``lakesight status`` say why,
and other requests still answer; once the fault is gone every event is processed exactly once."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from handlers.intake.eventlog import EventStatus
from infra.cli.local import _handler_rows
from infra.core.status import snapshot
from infra.deadletters import dead_letter_path, read_dead_letters
from infra.processes import free_port
from infra.settings import Settings
from tests.helpers.handlers import arrival_lines, blob_event, event_grid_dict, logged_event, serve_process
from tests.helpers.waiting import wait_until

KEY = {"aeg-sas-key": "local-dev-key"}
# Holds the write lock of the SQLite file argv[1] until its stdin closes (the test ends it).
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


def events_db(settings: Settings) -> Path:
    return settings.state_dir / "handlers" / "events.db"


@contextmanager
def write_locked(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``database``'s write lock for as long as the block runs."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(database)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        yield locker
    finally:
        if locker.stdin is not None:
            locker.stdin.close()  # the locker ends, and its lock with it
        try:
            locker.wait(timeout=30)
        finally:
            if locker.poll() is None:
                locker.kill()


def _chattr(flag: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)


@contextmanager
def immutable(folder: Path) -> Iterator[None]:
    """``folder`` and everything in it immutable (``chattr +i``) while the block runs: as read-only for
    root as a read-only mount. SQLite's shared-memory files stay as they are: they are mapped into the
    running process, and a mapped page that cannot be written kills it (SIGBUS), which no read-only
    mount does (it cannot be made while files are open for writing)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: cannot make a folder read-only for root")
    made: list[Path] = []
    try:
        for path in [folder, *sorted(folder.rglob("*"))]:  # a folder before what is in it: nothing new appears
            if path.name.endswith("-shm"):
                continue
            done = _chattr("+i", path)
            if done.returncode == 0:
                made.append(path)
            elif path.exists():  # not a file renamed away meanwhile: the filesystem does not allow it
                pytest.skip(f"chattr +i is not allowed here: {done.stderr.strip()}")
        yield
    finally:
        for path in reversed(made):
            assert _chattr("-i", path).returncode == 0


@contextmanager
def small_disk(folder: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (a disk that can really be filled)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


@contextmanager
def filled(folder: Path) -> Iterator[None]:
    """The filesystem of ``folder`` full to the last block while the block runs (a filler file, then removed)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        block = b"\0" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


def _deliver(port: int, events: list[Any]) -> httpx.Response:
    body = [event_grid_dict(e) for e in events]
    return httpx.post(f"http://127.0.0.1:{port}/api/events", json=body, headers=KEY, timeout=30)


def _health(port: int) -> httpx.Response:
    # Far shorter than the busy timeout of a writer: a probe that waits on the write lock fails here.
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)


def _status_line(settings: Settings) -> str:
    """The handler's row of ``lakesight status`` (from the status file the running handler keeps)."""
    rows = _handler_rows(snapshot(settings)["handlers"])
    return rows[0]["value"] if rows else ""


def _status(settings: Settings, event_id: str) -> str | None:
    row = logged_event(settings, event_id)
    return None if row is None else row["status"]


def _all_done(settings: Settings, events: list[Any]) -> bool:
    return all(_status(settings, e.id) == EventStatus.DONE for e in events)


def _problem_naming(port: int, *words: str) -> dict | None:
    """/healthz's answer when it is 503 with a problem naming every one of ``words``."""
    answer = _health(port)
    if answer.status_code != 503:
        return None
    found = [p for p in answer.json()["problems"] if all(w in p for w in words)]
    return answer.json() if found else None


def _refused_while_faulty(port: int, settings: Settings, events: list[Any], *, error: str, status: str) -> None:
    """Deliveries are answered 503 with Retry-After naming ``error`` and nothing is claimed; /healthz
    (which never waits on the event log's write lock) and lakesight status say why."""
    refused = _deliver(port, events)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert error in refused.json()["error"]
    assert all(logged_event(settings, e.id) is None for e in events)
    unhealthy = wait_until(lambda: _problem_naming(port, "event log", error), f"/healthz to name {error!r}")
    assert unhealthy["status"] == "unhealthy"
    wait_until(lambda: status in _status_line(settings), f"lakesight status to say {status!r}")
    assert _deliver(port, events).status_code == 503  # Event Grid retries meanwhile: still refused


def _processed_once_fault_gone(port: int, settings: Settings, events: list[Any]) -> None:
    """Event Grid's next retry is accepted and done, health recovers, and a later one is a duplicate."""
    accepted = wait_until(
        lambda: (r := _deliver(port, events)).status_code == 200 and r.json(), "a redelivery to be accepted"
    )
    assert accepted == {"accepted": len(events), "duplicates": 0, "ignored": 0}
    wait_until(lambda: _all_done(settings, events), "the redelivered events to be done")
    wait_until(lambda: _health(port).status_code == 200, "/healthz to recover")
    wait_until(lambda: _status_line(settings).startswith("ok;"), "lakesight status to recover")
    assert _deliver(port, events).json() == {"accepted": 0, "duplicates": len(events), "ignored": 0}


def _scenario(tmp_path: Path, state: Path, fault: Callable[[Settings], Any], *, error: str, status: str) -> None:
    """One event done before the fault, three delivered during it (refused), then accepted after it;
    each has exactly one arrival record."""
    settings = Settings(state_dir=state)
    before = blob_event(settings, "images", "cam/before.png")
    during = [blob_event(settings, "images", f"cam/during-{i}.png") for i in range(3)]
    port = free_port()
    with serve_process(state, port, log=tmp_path / "serve.log"):
        assert _deliver(port, [before]).status_code == 200
        wait_until(lambda: _all_done(settings, [before]), "the first event to be done")
        with fault(settings):
            _refused_while_faulty(port, settings, during, error=error, status=status)
        _processed_once_fault_gone(port, settings, during)
    written = sorted(r["event_id"] for r in arrival_lines(settings))
    assert written == sorted(e.id for e in [before, *during])  # each exactly once


def test_a_locked_event_log_answers_503_says_why_and_loses_nothing(tmp_path: Path) -> None:
    """Another process holds the event log's write lock (released when it ends)."""
    _scenario(
        tmp_path,
        tmp_path / "state",
        lambda settings: write_locked(events_db(settings)),
        error="database is locked",
        status="event log refuses writes",
    )


def test_a_read_only_state_folder_answers_503_says_why_and_loses_nothing(tmp_path: Path) -> None:
    """The state folder made immutable (root ignores file modes): no write reaches the log, the arrivals
    or the status file, which lakesight status reports as a heartbeat that stopped while the process runs."""
    _scenario(
        tmp_path,
        tmp_path / "state",
        lambda settings: immutable(settings.state_dir),
        error="disk I/O error",
        status="unresponsive",
    )


def test_a_full_disk_answers_503_says_why_and_loses_nothing(tmp_path: Path) -> None:
    """The state folder on a small tmpfs of its own, filled to the last byte, then freed."""
    with small_disk(tmp_path / "state") as state:
        _scenario(
            tmp_path, state, lambda _settings: filled(state), error="database or disk is full", status="unresponsive"
        )


def test_work_acknowledged_before_the_log_was_locked_is_finished_once_after(tmp_path: Path) -> None:
    """Events accepted while the fast lane was held up (a locked dead-letter database), whose work then
    runs into the locked event log: they stay pending, /healthz says why, and once the lock is gone
    they are retried and finished, each once."""
    state = tmp_path / "state"
    settings = Settings(state_dir=state)
    env = {
        "LAKESIGHT_HANDLER_LEASE_S": "3",
        "LAKESIGHT_HANDLER_RETRY_BASE_S": "0.2",
        "LAKESIGHT_HANDLER_RETRY_MAX_S": "0.5",
    }
    refused = blob_event(settings, "images", "a/../../etc/passwd")  # refused: needs a dead letter
    good = [blob_event(settings, "images", f"cam/{i}.png") for i in range(3)]
    letters = dead_letter_path(settings)
    letters.parent.mkdir(parents=True)
    port = free_port()
    with (
        serve_process(state, port, log=tmp_path / "serve.log", **env),
        closing(sqlite3.connect(letters, timeout=1)) as letters_lock,
    ):
        letters_lock.execute("BEGIN EXCLUSIVE")
        assert _deliver(port, [refused]).status_code == 200
        wait_until(lambda: _health(port).json()["lanes"]["fast"]["busy_s"] is not None, "the fast lane to be held up")
        assert _deliver(port, good).json()["accepted"] == 3
        with write_locked(events_db(settings)):
            letters_lock.rollback()  # the lane goes on, into the locked event log
            wait_until(lambda: _problem_naming(port, "event log", "database is locked"), "/healthz to say why")
            assert all(_status(settings, e.id) == EventStatus.PENDING for e in [refused, *good])
        wait_until(
            lambda: _all_done(settings, good) and _status(settings, refused.id) == EventStatus.REFUSED,
            "the held-up work to be retried and finished",
        )
        wait_until(lambda: _health(port).status_code == 200, "/healthz to recover")
    assert sorted(r["event_id"] for r in arrival_lines(settings)) == sorted(e.id for e in good)  # each once
    recorded = read_dead_letters(settings)
    assert recorded is not None and [r["event_id"] for r in recorded["recent"]] == [refused.id]
