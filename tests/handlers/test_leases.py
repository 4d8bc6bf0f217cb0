"""Two ``lakesight serve`` processes on one state folder: one processor per event.

Handler A's work is held in flight by a real lock: the test holds an exclusive transaction on the
dead-letter database while A records a refused event. Handler B, started meanwhile on the same state
folder, must leave A's live work alone past the lease's length (A renews it); once A is killed, B takes
the work over when the lease runs out and finishes it, and nothing A finished is done twice.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx

from handlers.intake.eventlog import EventStatus
from infra.deadletters import dead_letter_path, read_dead_letters
from infra.processes import free_port
from infra.settings import Settings
from tests.helpers.handlers import arrival_lines, blob_event, event_grid_dict, logged_event, serve_process
from tests.helpers.waiting import wait_until

LEASE_S = 3.0
KEY = {"aeg-sas-key": "local-dev-key"}


def _health(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()


def test_a_second_handler_never_reruns_live_work_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = Settings(state_dir=state)
    env = {"LAKESIGHT_HANDLER_LEASE_S": str(LEASE_S)}
    good = [blob_event(settings, "images", f"cam/{i}.png") for i in range(3)]
    refused = blob_event(settings, "images", "a/../../etc/passwd")  # refused: needs a dead letter
    letters = dead_letter_path(settings)
    letters.parent.mkdir(parents=True)
    port_a, port_b = free_port(), free_port()
    with serve_process(state, port_a, **env) as handler_a, closing(sqlite3.connect(letters, timeout=1)) as lock:
        lock.execute("BEGIN EXCLUSIVE")  # A's dead-letter write waits on this
        answer = httpx.post(
            f"http://127.0.0.1:{port_a}/api/events", json=[event_grid_dict(e) for e in [*good, refused]], headers=KEY
        )
        assert answer.json() == {"accepted": 4, "duplicates": 0, "ignored": 0}
        for event in good:  # finished before the dead letter is attempted
            wait_until(lambda e=event: (logged_event(settings, e.id) or {})["status"] == EventStatus.DONE, "A's work")
        owner_a = _health(port_a)["owner"]
        held = wait_until(lambda: logged_event(settings, refused.id), "the refused event in the log")
        assert held["status"] == EventStatus.PENDING and held["owner"] == owner_a

        with serve_process(state, port_b, **env):
            owner_b = _health(port_b)["owner"]
            # Past the lease's length, with B sweeping all along: A renews its lease, B leaves the work.
            past_lease = time.time() + LEASE_S + 1
            sweeps = _health(port_b)["sweeps"]
            wait_until(lambda: time.time() > past_lease and _health(port_b)["sweeps"] > sweeps + 2, "B to sweep")
            still = logged_event(settings, refused.id)
            assert still is not None and (still["status"], still["owner"]) == (EventStatus.PENDING, owner_a)

            handler_a.send_signal(signal.SIGKILL)
            handler_a.wait(timeout=30)
            lock.rollback()  # the fault is gone; A's lease runs out and B takes the work over
            done = wait_until(
                lambda: (row := logged_event(settings, refused.id)) and row["status"] == EventStatus.REFUSED and row,
                "B to take over and finish the dead handler's event",
            )
            assert done["owner"] == owner_b
    recorded = read_dead_letters(settings)
    assert recorded is not None and [r["event_id"] for r in recorded["recent"]] == [refused.id]
    assert sorted(r["event_id"] for r in arrival_lines(settings)) == sorted(e.id for e in good)  # each once
