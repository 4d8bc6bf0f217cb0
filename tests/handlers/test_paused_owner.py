"""A handler process paused past its lease (SIGSTOP: a frozen VM, a long GC, a swap storm; a log locked
past the lease does the same to renewals) while work sits in its lane: a second ``lakesight serve`` on
the same state folder takes the work over and finishes it; when the first one resumes, the work it had
queued is not done a second time (the events it was in the middle of are: their outcome is idempotent)."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from handlers.intake.eventlog import EventStatus
from infra.deadletters import dead_letter_path, read_dead_letters
from infra.processes import free_port
from infra.settings import Settings
from tests.helpers.handlers import arrival_lines, blob_event, event_grid_dict, logged_event, serve_process
from tests.helpers.waiting import wait_until

LEASE_S = 3.0
KEY = {"aeg-sas-key": "local-dev-key"}


def _health(port: int) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()


def _deliver(port: int, events: list[Any]) -> dict[str, Any]:
    body = [event_grid_dict(e) for e in events]
    return httpx.post(f"http://127.0.0.1:{port}/api/events", json=body, headers=KEY, timeout=30).json()


def _status(settings: Settings, event_id: str) -> str | None:
    row = logged_event(settings, event_id)
    return None if row is None else row["status"]


def test_a_paused_handler_does_not_redo_work_another_took_over(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = Settings(state_dir=state)
    env = {"LAKESIGHT_HANDLER_LEASE_S": str(LEASE_S)}
    refused = blob_event(settings, "images", "a/../../etc/passwd")  # refused: needs a dead letter
    good = [blob_event(settings, "images", f"cam/{i}.png") for i in range(3)]
    letters = dead_letter_path(settings)
    letters.parent.mkdir(parents=True)
    port_a, port_b = free_port(), free_port()
    with serve_process(state, port_a, **env) as handler_a, closing(sqlite3.connect(letters, timeout=1)) as lock:
        lock.execute("BEGIN EXCLUSIVE")  # A's fast lane waits on this while recording the dead letter
        assert _deliver(port_a, [refused])["accepted"] == 1
        wait_until(lambda: _health(port_a)["lanes"]["fast"]["busy_s"] is not None, "A's fast lane to be held up")
        assert _deliver(port_a, good)["accepted"] == 3  # queued in A's lane behind the held-up work

        with serve_process(state, port_b, log=tmp_path / "b.log", **env):
            owner_b = _health(port_b)["owner"]
            handler_a.send_signal(signal.SIGSTOP)
            try:  # A cannot renew: its lease runs out and B takes all its work over
                lock.rollback()
                wait_until(
                    lambda: (
                        all(_status(settings, e.id) == EventStatus.DONE for e in good)
                        and _status(settings, refused.id) == EventStatus.REFUSED
                    ),
                    "B to finish A's work",
                )
            finally:
                handler_a.send_signal(signal.SIGCONT)
            assert all((logged_event(settings, e.id) or {})["owner"] == owner_b for e in good)
            # A resumes with the work it had queued: all four items pass through its fast lane.
            wait_until(lambda: _health(port_a)["lanes"]["fast"]["worked"] >= 4, "A to go through its queued work")
    assert sorted(r["event_id"] for r in arrival_lines(settings)) == sorted(e.id for e in good)  # each once
    recorded = read_dead_letters(settings)
    assert recorded is not None and [r["event_id"] for r in recorded["recent"]] == [refused.id]
